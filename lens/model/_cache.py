"""The on-disk cache for converted weights and trained organisms.

Every cache entry is a directory written under a temporary name and renamed into
place only when complete; its ``manifest.json`` (written last) records the size and
SHA-256 of every file. An entry whose manifest is missing or disagrees with the files
is treated as absent and rebuilt, never used: a killed conversion or a flipped byte
cannot leak into an analysis.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

MANIFEST = "manifest.json"
# Bump when the layout of cached entries changes, so old entries are rebuilt.
CACHE_FORMAT = 1


def cache_root() -> Path:
    """The cache directory: ``$LENS_CACHE`` if set, else the user cache dir."""
    env = os.environ.get("LENS_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("attention-workbench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def entry_path(kind: str, key: str) -> Path:
    """Where the entry ``kind/key`` lives (it may not exist yet)."""
    return cache_root() / kind / key


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed (cache manifests, capture checksums, store datasets)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_digest(path: Path) -> str:
    """SHA-256 of a file's content, computed once per (path, size, mtime) and remembered in the cache.

    The GGUF conversion cache is keyed by it: two files with the same name and size (two
    fine-tunes at one quantization) get different entries, and a file changed in place gets
    a new one. A stamp that matches is trusted; one that does not is hashed again.
    """
    path = Path(path).resolve()
    st = path.stat()
    stamp = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = cache_root() / "digests.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    if stamp not in memo:
        memo[stamp] = file_sha256(path)
        tmp = memo_file.with_name(f".{memo_file.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(memo, indent=1, sort_keys=True))
        os.replace(tmp, memo_file)  # concurrent writers: the last one wins, and each wrote whole stamps
    return memo[stamp]


def _file_records(directory: Path) -> dict[str, dict]:
    return {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def is_valid(directory: Path) -> bool:
    """True when ``directory`` holds a complete entry whose files match its manifest."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if recorded.get("format") != CACHE_FORMAT:
        return False
    files = recorded.get("files", {})
    if not files:
        return False
    for name, rec in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != rec["size"]:
            return False
        if file_sha256(path) != rec["sha256"]:
            return False
    return True


def read_meta(directory: Path) -> dict:
    """The free-form metadata stored with an entry's manifest."""
    return json.loads((directory / MANIFEST).read_text()).get("meta", {})


@contextlib.contextmanager
def writing(kind: str, key: str, meta: dict | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success, seal it and move it into place.

    On error the temporary directory is removed and any existing entry is untouched.
    """
    final = entry_path(kind, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        records = _file_records(tmp)
        manifest = {"format": CACHE_FORMAT, "files": records, "meta": meta or {}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if final.exists():
            # Move the stale entry aside first: rename is atomic, rmtree is not.
            stale = final.with_name(f".{key}.stale-{uuid.uuid4().hex[:8]}")
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

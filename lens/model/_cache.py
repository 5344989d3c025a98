"""The on-disk cache for converted weights and trained organisms.

Every cache entry is a directory written under a temporary name and renamed into
place only when complete; its ``manifest.json`` (written last) records the size and
xxh3-128 digest of every file. An entry whose manifest is missing or disagrees with the
files is treated as absent and rebuilt, never used: a killed conversion or a flipped byte
cannot leak into an analysis.

The file digests here also serve the saved Captures' checksums (``lens.record``). They
guard against accidents (a killed write, a flipped byte, a file copied over), not against
an adversary who could as well rewrite the recorded digest, so a fast non-cryptographic
hash does the job: xxh3-128 runs at memory speed where SHA-256 took ~23 s per analyze of a
13.9 GB store (benchmarks/RESULTS.md, "Verifying saved files"). Files recorded with SHA-256
before the switch are still verified, with SHA-256.

``same_digest`` hashes a file in full the first time a process sees it; a later check in
the same process skips the bytes while the file's stamp (device, inode, size, mtime,
ctime) is unchanged. The stamp lives only in the process: a new process hashes again,
so damage that leaves every stamp field alone (bit rot under the file system) is caught
by the next run. ctime cannot be set back by a user, so a byte changed with its mtime
restored (``os.utime``) changes the stamp. A stamp is kept only for a file whose last
change is older than ``SETTLED_NS``: file times come from a coarse clock, and a change
within the same tick as the one hashed would leave the stamp equal (git's "racy clean").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import xxhash

try:
    import fcntl  # POSIX: entries are built under an inter-process lock (``building``)
except ImportError:  # Windows: no lock; concurrent builders each write a whole entry, the last one stays
    fcntl = None

MANIFEST = "manifest.json"
# Bump when the layout of cached entries changes, so old entries are rebuilt.
CACHE_FORMAT = 1


def cache_root() -> Path:
    """The cache directory: ``$LENS_CACHE`` if set, else the user cache dir."""
    env = os.environ.get("LENS_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(platformdirs.user_cache_dir("attention-workbench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def entry_path(kind: str, key: str) -> Path:
    """Where the entry ``kind/key`` lives (it may not exist yet)."""
    return cache_root() / kind / key


# The digests a record may hold, the one written now first. SHA-256 only verifies records
# written before xxh3 (capture sidecars, cache manifests); nothing needs it to be cryptographic.
DIGESTS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
WRITTEN_DIGEST = "xxh3_128"
DIGEST_NAMES = {"xxh3_128": "xxh3-128", "sha256": "SHA-256"}  # for messages
# A stamp is trusted only for a file last changed this long before it was hashed: Linux file
# times tick with a coarse clock (one jiffy, up to 10 ms) and FAT's mtime with 2 s.
SETTLED_NS = 2_000_000_000
# (digest name, digest, device, inode, size, mtime_ns, ctime_ns) of files that matched in this process.
_verified: set[tuple] = set()


def file_digest(path: Path, name: str = WRITTEN_DIGEST) -> str:
    """The hex digest ``name`` (a key of ``DIGESTS``) of a file's bytes, streamed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, DIGESTS[name]).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed (the store's dataset digest and the GGUF cache key)."""
    return file_digest(path, "sha256")


def recorded_digest(record: dict) -> str | None:
    """Which digest a record (sidecar checksum, manifest entry) holds: the newest in ``DIGESTS``, None if none."""
    return next((name for name in DIGESTS if name in record), None)


def _stamp(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def same_digest(path: Path, name: str, expected: str) -> bool:
    """Whether ``path``'s bytes have digest ``expected`` under ``name``; hashed once per process while unchanged.

    See the module docstring for the stamp, what it can miss and why it is kept only in the process.
    """
    before = os.stat(path)
    now = time.time_ns()
    key = (name, expected, *_stamp(before))
    if key in _verified:
        return True
    if file_digest(path, name) != expected:
        return False
    after = os.stat(path)
    if _stamp(after) == _stamp(before) and max(after.st_mtime_ns, after.st_ctime_ns) < now - SETTLED_NS:
        _verified.add(key)
    return True


def content_digest(path: Path) -> str:
    """SHA-256 of a file's content, computed once per stamp and remembered in the cache.

    The GGUF conversion cache is keyed by it: two files with the same name and size (two
    fine-tunes at one quantization) get different entries, and a file changed in place gets
    a new one. A stamp that matches is trusted; one that does not is hashed again. It stays
    SHA-256 although no adversary is in view: the digest names cache entries on disk, and
    another hash would strand every converted model; it is computed once per file anyway.
    The stamp holds the inode and ctime besides size and mtime, so a file rewritten in place
    with its mtime put back still gets a new digest.
    """
    path = Path(path).resolve()
    st = path.stat()
    stamp = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"
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
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, WRITTEN_DIGEST: file_digest(p)}
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
        name = recorded_digest(rec)  # "sha256" in entries written before xxh3: still checked, with it
        if name is None or not same_digest(path, name, rec[name]):
            return False
    return True


def read_meta(directory: Path) -> dict:
    """The free-form metadata stored with an entry's manifest."""
    return json.loads((directory / MANIFEST).read_text()).get("meta", {})


@contextlib.contextmanager
def building(kind: str, key: str) -> Iterator[None]:
    """Hold the entry ``kind/key``'s inter-process lock: check, build and write it inside the block.

    Processes that need one entry at once (pytest-xdist workers, Ray actors, two notebooks)
    then build it once: the others wait, and find it valid when they get the lock.
    """
    lock = entry_path(kind, key).with_name(f".{key}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


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

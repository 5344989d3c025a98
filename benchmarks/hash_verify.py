"""Verifying saved files on load: SHA-256 (before) against xxh3-128 and the in-process stamp (after).

    python benchmarks/hash_verify.py                      # 1.5 GB in 12 saved Captures, best of 3
    python benchmarks/hash_verify.py --gb 2 --shards 16 --repeats 5

Writes ``--shards`` Captures (one float32 statistic each, ``--gb`` in all) with ``Capture.save``
into a temporary directory, then times over the whole set:

  * read: the bytes read into a buffer, no hash (what the disk or page cache costs);
  * sha256: ``file_digest(path, "sha256")`` of every file, the check every load ran before;
  * xxh3: ``file_digest(path, "xxh3_128")``, the check of a file first seen in a process;
  * stamp hit: ``same_digest`` of a file already checked in this process (no byte read);
  * ``Capture.load`` of every shard with a SHA-256 sidecar (before), with the xxh3 sidecar first
    seen (``_cache._verified`` emptied), and with the xxh3 sidecar again (stamp hit).

The files were just written, so they sit in the page cache: the figures are warm-cache ones (a
cold disk adds its read time to every row but the stamp hit). ``SETTLED_NS`` is set to 0 so that
the just-written files can be stamped (the default waits 2 s after a file's last change).
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import tempfile
import time
from pathlib import Path

import torch
import xxhash

import lens
from lens.model import _cache
from lens.record._data import SIDECAR, TENSORS

CHUNK = 1 << 20


def write_shards(root: Path, gb: float, shards: int) -> list[Path]:
    """``shards`` saved Captures of ``gb`` GB in all: 2 inputs of 7 tokens, one big float32 statistic."""
    per = int(gb * 1e9 / shards / 4 / 2)  # float32 values per input
    dirs = []
    for s in range(shards):
        g = torch.Generator().manual_seed(s)
        lengths = torch.tensor([7, 7])
        cap = lens.Capture(tokens=torch.randint(0, 97, (2, 7), generator=g), lengths=lengths,
                           str_tokens=[[f"t{i}" for i in range(7)]] * 2,
                           stats={"received": torch.rand(2, 1, 1, per, generator=g)}, meta={})
        dirs.append(cap.save(root / f"{s:05d}"))
    return dirs


def read_all(paths: list[Path]) -> None:
    buf = bytearray(CHUNK)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.5, help="size of the file set (GB)")
    ap.add_argument("--shards", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    args = ap.parse_args()

    _cache.SETTLED_NS = 0
    root = Path(tempfile.mkdtemp(prefix="hash_verify.", dir=args.dir))
    try:
        dirs = write_shards(root, args.gb, args.shards)
        files = [d / TENSORS for d in dirs]
        total = sum(f.stat().st_size for f in files) / 1e9
        sha = {f: _cache.file_digest(f, "sha256") for f in files}
        xxh = {f: _cache.file_digest(f, "xxh3_128") for f in files}
        time.sleep(0.05)  # past the file-time tick of the last write
        rows = [
            ("read (no hash)", best(lambda: read_all(files), args.repeats)),
            ("sha256 (before: every load)", best(lambda: [_cache.file_digest(f, "sha256") for f in files],
                                                 args.repeats)),
            ("xxh3-128 (after: first check in a process)",
             best(lambda: [_cache.file_digest(f, "xxh3_128") for f in files], args.repeats)),
        ]
        assert all(_cache.same_digest(f, "xxh3_128", xxh[f]) for f in files)  # stamps them
        rows.append(("stamp hit (after: an unchanged file checked again)",
                     best(lambda: [_cache.same_digest(f, "xxh3_128", xxh[f]) for f in files], args.repeats)))

        def load_all() -> None:
            for d in dirs:
                lens.Capture.load(d)

        def load_first_seen() -> None:
            _cache._verified.clear()
            load_all()

        rows.append(("Capture.load, xxh3 sidecar, first seen", best(load_first_seen, args.repeats)))
        load_all()
        rows.append(("Capture.load, xxh3 sidecar, stamp hit", best(load_all, args.repeats)))
        for d, f in zip(dirs, files):  # the sidecars a save before xxh3 wrote
            side = json.loads((d / SIDECAR).read_text())
            side["checksums"][TENSORS] = {"bytes": f.stat().st_size, "sha256": sha[f]}
            (d / SIDECAR).write_text(json.dumps(side))
        rows.append(("Capture.load, SHA-256 sidecar (before), first seen", best(load_first_seen, args.repeats)))

        print(f"{args.shards} files, {total:.2f} GB in all, best of {args.repeats}, warm page cache; "
              f"hashlib sha256 from {ssl.OPENSSL_VERSION}, xxhash {xxhash.VERSION} (xxh3 {xxhash.XXHASH_VERSION})")
        print("\n| what | time | GB/s |\n|---|---|---|")
        for name, s in rows:  # GB/s only where the check read the bytes
            rate = "-" if "stamp hit" in name else f"{total / s:.1f}"
            print(f"| {name} | {s * 1e3:.2f} ms | {rate} |" if s < 0.1 else f"| {name} | {s:.3f} s | {rate} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Saved files are hashed once at write (xxh3-128) and verified on load without re-hashing an unchanged file.

What must hold (``lens.model._cache``'s docstring has the design): a changed byte is caught even
when the file keeps its size and its mtime is put back; a second load in the same process of a
file that has not changed reads no byte for the check; Captures and cache entries written with
SHA-256 before the switch are still verified, with SHA-256. The Capture here is built by hand
(prime sizes, no model) so each case runs in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch

import lens
from lens.model import _cache
from lens.record._data import SIDECAR, TENSORS, CaptureFileError

# Linux file times tick with a coarse clock (one jiffy, at most 10 ms): wait this long so that a
# change made after it gets a later ctime than the one recorded before it.
TICK_S = 0.05


def _capture() -> lens.Capture:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([7, 5])
    tokens = torch.randint(0, 97, (2, 7), generator=g) * (torch.arange(7) < lengths[:, None])
    str_tokens = [[f"t{int(t)}" for t in row[:n]] for row, n in zip(tokens, lengths.tolist())]
    stats = {"entropy": torch.rand(2, 3, 5, 7, generator=g), "sink_mass": torch.rand(2, 3, 5, 7, generator=g)}
    return lens.Capture(tokens=tokens, lengths=lengths, str_tokens=str_tokens, stats=stats, meta={})


def _flip_keeping_size_and_mtime(path: Path) -> None:
    """Change one byte inside the last tensor's data, then put the mtime back as it was."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Every file whose bytes are hashed, in order."""
    seen: list[Path] = []
    real = _cache.file_digest

    def counting(path, name=_cache.WRITTEN_DIGEST):
        seen.append(Path(path))
        return real(path, name)

    monkeypatch.setattr(_cache, "file_digest", counting)
    return seen


def test_save_records_xxh3_and_a_reload_of_an_unchanged_file_hashes_nothing(tmp_path, monkeypatch, hashed):
    monkeypatch.setattr(_cache, "SETTLED_NS", 0)  # stamp files at once (the default waits 2 s after a change)
    d = _capture().save(tmp_path / "cap")
    rec = json.loads((d / SIDECAR).read_text())["checksums"][TENSORS]
    assert set(rec) == {"bytes", "xxh3_128"} and len(rec["xxh3_128"]) == 32
    time.sleep(TICK_S)
    first = lens.Capture.load(d)
    assert hashed == [d / TENSORS]  # first seen by a check in this process: hashed in full
    again = lens.Capture.load(d)
    assert hashed == [d / TENSORS]  # the stamp matched: no byte read for the check
    assert torch.equal(first.stats["entropy"], again.stats["entropy"])
    # The same bytes with the mtime put back: the ctime moved, so the stamp differs and the file is hashed.
    time.sleep(TICK_S)
    _flip_keeping_size_and_mtime(d / TENSORS)
    with pytest.raises(CaptureFileError, match=rf"{TENSORS} was changed after it was saved: its content hash "
                                               rf"\(xxh3-128\) differs from the one recorded in {SIDECAR}"):
        lens.Capture.load(d)
    assert hashed == [d / TENSORS] * 2
    with pytest.raises(CaptureFileError, match=str(d / TENSORS)):  # and again: a failed check is never stamped
        lens.Capture.load(d)


def test_a_change_in_the_tick_of_the_last_check_is_caught(tmp_path, hashed, monkeypatch):
    """Default settings: a file changed within 2 s of its last change is never stamped ("racy clean" in git).

    File times with a coarse clock (as on coarse file systems) are simulated by cutting the
    stamp's times to 100 s ticks, so the flip below shares the load's tick and leaves the stamp
    equal: only the 2 s rule makes the second load hash the file again (with SETTLED_NS = 0 it fails).
    """
    fine = _cache._stamp
    # times cut to 100 s ticks: the load and the flip below share a tick unless they straddle a boundary
    monkeypatch.setattr(_cache, "_stamp", lambda st: (*fine(st)[:3], *(t // 10**11 for t in fine(st)[3:])))
    d = _capture().save(tmp_path / "cap")
    lens.Capture.load(d)
    _flip_keeping_size_and_mtime(d / TENSORS)  # no sleep: the same (coarse) tick as the load's stamp
    with pytest.raises(CaptureFileError, match=rf"{d / TENSORS} was changed after it was saved"):
        lens.Capture.load(d)
    assert hashed == [d / TENSORS] * 2


def test_a_capture_saved_with_sha256_is_still_verified(tmp_path):
    d = _capture().save(tmp_path / "cap")
    side = json.loads((d / SIDECAR).read_text())
    side["checksums"][TENSORS] = {"bytes": (d / TENSORS).stat().st_size,
                                  "sha256": hashlib.sha256((d / TENSORS).read_bytes()).hexdigest()}
    (d / SIDECAR).write_text(json.dumps(side))  # what a save before xxh3 wrote
    assert lens.Capture.load(d).n_inputs == 2
    _flip_keeping_size_and_mtime(d / TENSORS)
    with pytest.raises(CaptureFileError, match=r"its content hash \(SHA-256\) differs"):
        lens.Capture.load(d)


def test_a_digest_this_version_does_not_know_is_refused_by_name(tmp_path):
    d = _capture().save(tmp_path / "cap")
    side = json.loads((d / SIDECAR).read_text())
    side["checksums"][TENSORS] = {"bytes": (d / TENSORS).stat().st_size, "blake9": "00"}
    (d / SIDECAR).write_text(json.dumps(side))
    with pytest.raises(CaptureFileError, match=rf"{TENSORS}: {SIDECAR} records its size but no digest .*blake9"):
        lens.Capture.load(d)


def test_cache_entries_written_with_sha256_stay_valid_and_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("LENS_CACHE", str(tmp_path))
    with _cache.writing("things", "a") as d:
        (d / "w.bin").write_bytes(bytes(range(251)) * 13)
    entry = _cache.entry_path("things", "a")
    manifest = json.loads((entry / _cache.MANIFEST).read_text())
    assert set(manifest["files"]["w.bin"]) == {"size", "xxh3_128"}
    manifest["files"]["w.bin"] = {"size": 251 * 13,
                                  "sha256": hashlib.sha256((entry / "w.bin").read_bytes()).hexdigest()}
    (entry / _cache.MANIFEST).write_text(json.dumps(manifest))  # an entry from before xxh3: no rebuild needed
    assert _cache.is_valid(entry)
    _flip_keeping_size_and_mtime(entry / "w.bin")
    assert not _cache.is_valid(entry)

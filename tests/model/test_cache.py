"""The cache's inter-process lock (``lens.model._cache.building``): one builder at a time per entry.

pytest-xdist workers, Ray actors and two notebooks may want the same converted model or
organism at once; inside ``building`` the second waits for the first and then finds the entry.
The lock is ``flock`` on a file opened by each holder, so two threads of one process
contend for it exactly as two processes do.
"""

from __future__ import annotations

import threading
import time

from lens.model import _cache


def test_a_second_builder_waits_and_finds_the_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("LENS_CACHE", str(tmp_path))
    events: list[str] = []
    inside = threading.Event()

    def build(name: str, hold: float):
        with _cache.building("models", "toy"):
            events.append(f"{name} in")
            inside.set()
            if not _cache.is_valid(_cache.entry_path("models", "toy")):
                time.sleep(hold)
                with _cache.writing("models", "toy") as tmp:
                    (tmp / "weights.bin").write_bytes(b"x" * 1000)
                events.append(f"{name} built")
            events.append(f"{name} out")

    first = threading.Thread(target=build, args=("first", 0.5))
    first.start()
    inside.wait(5)
    second = threading.Thread(target=build, args=("second", 0.0))
    second.start()
    first.join()
    second.join()
    assert events == ["first in", "first built", "first out", "second in", "second out"]


def test_other_entries_do_not_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("LENS_CACHE", str(tmp_path))
    done = []

    def other_entry():
        with _cache.building("models", "b"):
            done.append("b")

    with _cache.building("models", "a"):
        other = threading.Thread(target=other_entry)
        other.start()
        other.join(5)
        assert done == ["b"]

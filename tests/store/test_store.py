"""Dataset capture to a store (``lens capture --dataset``, ``lens.Store``): shards, index, streaming analysis, faults.

The organism is the induction model (cached after its first training, about 2 minutes
once per machine). 28 prompts of 5-21 tokens in shards of 8 (the last one holds 4): the
capture's batch size is 8, so a shard's batches are the whole capture's batches and its
tensors are bit-identical; the atlas must equal the one-process atlas frame for frame.
Ray tests start a local cluster in the test (``ray.init(num_cpus=2)``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

from skips import require

import lens
from lens.record._data import TENSORS, CaptureFileError
from lens.record._executor import make_executor
from lens.store._store import capture_dataset, read_dataset

pytestmark = pytest.mark.organism

MODEL = "induction"
N_PROMPTS, SHARD = 28, 8
DORMANT_90 = ("SELECT layer, head, avg((dormancy >= 0.5)::INT) AS dormant_share FROM heads "
              "GROUP BY layer, head HAVING dormant_share >= 0.9 ORDER BY layer, head")


def _prompts() -> list[str]:
    rng = random.Random(0)
    out = []
    for _ in range(N_PROMPTS):
        r = [f"t{rng.randint(0, 40):02d}" for _ in range(rng.randint(2, 10))]
        out.append(" ".join(r + r))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "prompts.txt"
    path.write_text("\n\n".join(_prompts()) + "\n")  # blank lines are skipped
    return path


@pytest.fixture(scope="module")
def local_store(dataset, tmp_path_factory) -> lens.Store:
    return capture_dataset(MODEL, dataset, tmp_path_factory.mktemp("local") / "store", shard_size=SHARD,
                           executor=make_executor("local", progress=False), echo=lambda s: None)


@pytest.fixture(scope="module")
def whole(dataset) -> lens.Capture:
    return lens.capture(lens.load(MODEL), read_dataset(dataset), progress=False)


def _assert_atlas_equal(got: lens.Atlas, want: lens.Atlas) -> None:
    assert list(got.findings) == list(want.findings) and got.skipped == want.skipped
    assert got.meta == want.meta
    for name, f in want.findings.items():
        pd.testing.assert_frame_equal(got[name].frame, f.frame, check_exact=False, rtol=1e-6)
        assert got[name].params == f.params, name
        assert got[name].text == f.text, name
        _summary_close(got[name], f)


def _summary_close(a, b) -> None:
    """Summaries hold nested lists; compare them leaf by leaf (floats to 1e-9 relative)."""
    def close(x, y):
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
        if isinstance(x, list):
            return len(x) == len(y) and all(close(u, v) for u, v in zip(x, y))
        if isinstance(x, float):
            return y == pytest.approx(x, rel=1e-9, nan_ok=True)
        return x == y
    assert close(a.summary, b.summary), (a.name, a.summary, b.summary)


def _shard_tensors_equal(a: lens.Store, b: lens.Store) -> None:
    assert a.n_shards == b.n_shards
    for s in range(a.n_shards):
        x, y = a.load_shard(s), b.load_shard(s)
        assert torch.equal(x.tokens, y.tokens) and x.str_tokens == y.str_tokens
        assert x.stats.keys() == y.stats.keys()
        for k in x.stats:
            assert torch.equal(x.stats[k], y.stats[k]), (s, k)


def _mtimes(store: lens.Store, shards) -> dict:
    return {p: p.stat().st_mtime_ns for s in shards
            for p in [*store.shard_dir(s).iterdir(), store.index_file(s)]}


def test_store_layout_and_manifest(local_store, dataset):
    m = local_store.manifest
    assert (m["model"], m["shard_size"], m["n_inputs"], m["n_shards"]) == (MODEL, SHARD, N_PROMPTS, 4)
    assert len(m["dataset"]["sha256"]) == 64 and m["capture"] == lens.CaptureSpec().to_dict()
    assert m["capture"]["stats"] == "default" and m["capture"]["backend"] == "auto"
    assert local_store.missing() == []
    assert [local_store.load_shard(s).n_inputs for s in range(4)] == [8, 8, 8, 4]
    assert not list(local_store.path.rglob(".*tmp*"))  # no temporary names left


def test_store_atlas_equals_in_process_atlas(local_store, whole):
    _assert_atlas_equal(lens.analyze(local_store), lens.analyze(whole))


def test_index_rows_and_dormant_query(local_store, whole):
    from lens.analyzers import sink_scores

    index = local_store.query("SELECT * FROM heads ORDER BY input, layer, head")
    L, H = whole.n_layers, whole.n_heads
    assert len(index) == N_PROMPTS * L * H
    assert index["input"].tolist() == [i for i in range(N_PROMPTS) for _ in range(L * H)]
    torch.testing.assert_close(torch.tensor(index["dormancy"].to_numpy()), sink_scores(whole).flatten())
    assert (index["tokens"].to_numpy() == whole.lengths.repeat_interleave(L * H).numpy()).all()
    top = whole.stats["received"].argmax(-1)  # padding receives 0, so the argmax is a real key
    assert (index["top_key"].to_numpy() == top.flatten().numpy()).all()
    # "which heads are dormant on 90% of inputs" is one query; the same from the in-process capture:
    got = local_store.query(DORMANT_90)
    share = (sink_scores(whole) >= 0.5).double().mean(0)
    want = [(int(l), int(h)) for l, h in torch.nonzero(share >= 0.9).tolist()]
    assert list(zip(got["layer"].astype(int), got["head"].astype(int))) == want


def test_cli_capture_dataset_and_analyze_store(local_store, dataset, tmp_path):
    from typer.testing import CliRunner

    from lens.cli import app

    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in read_dataset(dataset)))
    out = tmp_path / "store"
    res = CliRunner().invoke(app, ["capture", "--model", MODEL, "--dataset", str(jsonl), "--out", str(out),
                                   "--shard-size", str(SHARD)])
    assert res.exit_code == 0, res.output
    _shard_tensors_equal(lens.Store(out), local_store)
    res = CliRunner().invoke(app, ["analyze", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["meta"]["n_inputs"] == N_PROMPTS
    again = CliRunner().invoke(app, ["capture", "--model", MODEL, "--dataset", str(jsonl), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a store: pass --resume" in again.output


def test_cli_census_keeps_only_the_statistics_asked(dataset, tmp_path):
    """--stats: a census keeps what it queries; the index has exactly the columns those give."""
    from typer.testing import CliRunner

    from lens.cli import app

    out = tmp_path / "census"
    res = CliRunner().invoke(app, ["capture", "--model", MODEL, "--dataset", str(dataset), "--out", str(out),
                                   "--shard-size", str(SHARD), "--stats", "sink_mass,entropy"])
    assert res.exit_code == 0, res.output
    store = lens.Store(out)
    kept = set(store.load_shard(0).stats)
    assert {"entropy", "sink_mass"} <= kept and not {"distance", "received", "pooled", "topk_idx"} & kept
    cols = set(store.query("SELECT * FROM heads LIMIT 1").columns)
    assert {"sink_mass", "dormancy", "entropy"} <= cols and not {"distance", "top_key"} & cols
    bad = CliRunner().invoke(app, ["capture", "--model", MODEL, "--dataset", str(dataset), "--out",
                                   str(tmp_path / "x"), "--stats", "sink_mass,bogus"])
    assert bad.exit_code == 2 and "unknown statistic(s) ['bogus']" in bad.output


def test_dataset_errors(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"text": "t01 t02"}\n{"prompt": "t03"}\n')
    with pytest.raises(ValueError, match=r'p.jsonl, line 2: needs a "text" string'):
        read_dataset(bad)
    bad.write_text('{"text": "t01"}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        read_dataset(bad)
    with pytest.raises(ValueError, match=r"unknown kind '.csv'"):
        (tmp_path / "p.csv").write_text("x\n")
        read_dataset(tmp_path / "p.csv")


def test_interrupt_then_resume(local_store, dataset, tmp_path):
    out = tmp_path / "store"
    written = []

    def ctrl_c_after_two(shard, cap):
        written.append(shard)
        if len(written) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver

    with pytest.raises(KeyboardInterrupt):
        capture_dataset(MODEL, dataset, out, shard_size=SHARD, on_shard=ctrl_c_after_two,
                        executor=make_executor("local", progress=False), echo=lambda s: None)
    store = lens.Store(out)
    assert store.missing() == [2, 3] and written == [0, 1]
    (out / "shards" / ".00002.tmp-1").mkdir()  # what a driver killed mid-write leaves: never taken for a shard
    before = _mtimes(store, [0, 1])
    with pytest.raises(ValueError, match="incomplete"):
        lens.analyze(store)
    with pytest.raises(FileExistsError, match="--resume"):
        capture_dataset(MODEL, dataset, out, shard_size=SHARD)
    with pytest.raises(ValueError, match="another shard_size"):
        capture_dataset(MODEL, dataset, out, shard_size=SHARD + 1, resume=True)
    with pytest.raises(ValueError, match="another capture stats, capture batch_size"):
        capture_dataset(MODEL, dataset, out, lens.CaptureSpec(stats=["entropy"]), shard_size=SHARD, resume=True,
                        batch_size=4)
    # A store written before the manifest held the spec (stats and backend only) resumes the same way.
    manifest = json.loads((out / "store.json").read_text())
    (out / "store.json").write_text(json.dumps({**{k: v for k, v in manifest.items() if k != "capture"},
                                                "stats": "default", "backend": "auto"}))
    resumed = []
    capture_dataset(MODEL, dataset, out, shard_size=SHARD, resume=True, on_shard=lambda s, c: resumed.append(s),
                    executor=make_executor("local", progress=False), echo=lambda s: None)
    assert resumed == [2, 3]  # finished shards not recomputed
    assert _mtimes(store, [0, 1]) == before  # nor rewritten
    assert not list(out.rglob(".*tmp*"))
    _shard_tensors_equal(store, local_store)
    _assert_atlas_equal(lens.analyze(store), lens.analyze(local_store))


def test_truncated_shard_is_detected_and_recomputed(local_store, dataset, tmp_path):
    from typer.testing import CliRunner

    from lens.cli import app

    out = Path(shutil.copytree(local_store.path, tmp_path / "store"))
    store = lens.Store(out)
    f = store.shard_dir(1) / TENSORS
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CaptureFileError, match="truncated"):
        lens.analyze(store)  # detected by its checksum, never read
    res = CliRunner().invoke(app, ["analyze", str(out)], env={"COLUMNS": "1000"})
    assert res.exit_code == 2 and "was truncated after it was saved" in res.output
    before = _mtimes(store, [0, 2, 3])
    said, redone = [], []
    capture_dataset(MODEL, dataset, out, shard_size=SHARD, resume=True, on_shard=lambda s, c: redone.append(s),
                    executor=make_executor("local", progress=False), echo=said.append)
    assert redone == [1] and any("shard 1: corrupt" in s and "recomputing" in s for s in said)
    assert _mtimes(store, [0, 2, 3]) == before
    _shard_tensors_equal(store, local_store)


def test_a_changed_byte_with_size_and_mtime_kept_is_detected(local_store, tmp_path):
    """The shard was loaded (and checked) before the change: the check of the reload still reads the bytes."""
    out = Path(shutil.copytree(local_store.path, tmp_path / "store"))
    store = lens.Store(out)
    lens.analyze(store)
    f = store.shard_dir(2) / TENSORS
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were; the ctime moved
    with pytest.raises(CaptureFileError, match=rf"{f} was changed after it was saved: its content hash"):
        lens.analyze(store)


# --- Ray -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = require("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_store_equals_local_store(ray_cluster, local_store, dataset, tmp_path):
    ex = make_executor("ray", workers=2, progress=False)
    try:
        store = capture_dataset(MODEL, dataset, tmp_path / "store", shard_size=SHARD, executor=ex,
                                echo=lambda s: None)
    finally:
        ex.close()
    _shard_tensors_equal(store, local_store)
    assert store.query("SELECT * FROM heads ORDER BY input, layer, head").equals(
        local_store.query("SELECT * FROM heads ORDER BY input, layer, head"))


@pytest.mark.ray
def test_ray_actor_killed_mid_run(ray_cluster, local_store, dataset, tmp_path):
    ray = ray_cluster
    ex = make_executor("ray", workers=2, progress=False)
    writes: list[int] = []
    killers: list[threading.Thread] = []

    def kill_after_first(shard, cap):
        writes.append(shard)
        if len(writes) == 1:  # kill every actor from another thread: the one still busy dies mid-shard
            killers.append(threading.Thread(target=lambda: [ray.kill(a, no_restart=False) for a in list(ex.actors)]))
            killers[0].start()
            killers[0].join()

    try:
        first = ray.get([a.pid.remote() for a in ex.actors])
        store = capture_dataset(MODEL, dataset, tmp_path / "store", shard_size=SHARD, executor=ex,
                                on_shard=kill_after_first, echo=lambda s: None)
        # Ray restarted every killed actor (a new process behind the same handle) and retried its shard
        assert not set(first) & set(ray.get([a.pid.remote() for a in ex.actors]))
    finally:
        ex.close()
    assert sorted(writes) == [0, 1, 2, 3]  # complete, and each shard written once
    _shard_tensors_equal(store, local_store)
    _assert_atlas_equal(lens.analyze(store), lens.analyze(local_store))


@pytest.mark.smollm2
def test_smollm2_store_atlas_equals_in_process_atlas(smollm2, tmp_path):
    """The real model: shards of 8 (= capture's batch size, so the batches are the same) -> same atlas."""
    texts = [f"Note {i}: the {c} box on shelf {i % 5} holds {3 * i + 1} marbles and a key."
             for i, c in enumerate(["red", "blue", "green", "amber"] * 4)]
    data = tmp_path / "prompts.txt"
    data.write_text("\n".join(texts) + "\n")
    store = capture_dataset("smollm2", data, tmp_path / "store", shard_size=8,
                            executor=make_executor("local", progress=False), echo=lambda s: None)
    assert store.n_shards == 2
    whole = lens.capture(smollm2, texts)
    _assert_atlas_equal(lens.analyze(store), lens.analyze(whole))
    rows = store.query("SELECT count(*) AS n FROM heads")
    assert int(rows["n"][0]) == 16 * smollm2.n_layers * smollm2.n_heads

"""Stores: a dataset captured shard by shard, with a per-(input, layer, head) Parquet index.

Layout of a store directory::

    STORE/store.json                 the manifest, written first: model, shard size, inputs, dataset SHA-256, and
                                     the CaptureSpec's fields (``"capture"``)
    STORE/shards/00000/              shard 0 in the Capture format (tensors.safetensors + capture.json, checksummed)
    STORE/index/00000.parquet        shard 0's index rows (``INDEX_COLUMNS``)

Workers (``lens.record._executor``: in this process or on Ray actors) only capture; the driver
alone writes. Every shard directory and index file is written under a temporary name and
renamed into place, so an interrupted run leaves only complete shards, and each shard is
written once. ``resume`` keeps a shard whose files pass ``Capture.load``'s checksums and
recomputes the others (a truncated file fails its checksum and is never read).
``lens.analyze(Store(path))`` streams over the shards (``lens.analyzers._stream``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import torch

from lens.analyzers import later_queries, masked_mean, real, sink_scores
from lens.model import file_sha256
from lens.record import Capture, CaptureFileError, CaptureSpec, capture, make_executor

__all__ = ["Store", "capture_dataset", "read_dataset"]

FORMAT = "lens-store/1"
MANIFEST = "store.json"
SHARDS = "shards"
INDEX = "index"
# One row per (input, layer, head). Means are over the input's real queries i >= 1 (query 0 sees only key 0).
INDEX_COLUMNS = {
    "input": "global input index (0-based, dataset order)",
    "layer": "layer", "head": "head",
    "tokens": "the input's length in tokens",
    "sink_mass": "mean_{i>=1} A[i, 0]",
    "dormancy": "s(x) of METHODS sec 2 (sink_mass plus learned_sink_mass where the model has learned sinks)",
    "entropy": "mean_{i>=1} row entropy (nats)",
    "distance": "mean_{i>=1} attention distance sum_j A[i, j] (i - j)",
    "top_key": "the key that receives the most attention (largest column sum over the input's queries)",
    "top_key_share": "that column sum / the sum of all column sums",
    "learned_sink_mass": "mean_{i>=1} share of the row taken by a learned sink (only for models with one)",
}


def read_dataset(path: str | Path) -> list[str]:
    """Prompts from ``.txt`` (one per non-empty line) or ``.jsonl`` (``{"text": ...}`` per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist: pass a .txt (one prompt per line) or a .jsonl file")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".txt":
        prompts = [line for line in lines if line.strip()]
    elif path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {n}: not valid JSON ({err}); each line must be "
                                 '{"text": "..."}') from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f'{path}, line {n}: needs a "text" string, got {line[:80]!r}; each line must be '
                                 '{"text": "..."}')
            prompts.append(row["text"])
    else:
        raise ValueError(f"dataset {path}: unknown kind {path.suffix!r}; pass a .txt (one prompt per line) or .jsonl")
    if not prompts:
        raise ValueError(f"dataset {path} holds no prompts")
    return prompts


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to capture one shard (picklable, the spec too; the worker holds the model)."""

    shard: int
    texts: tuple[str, ...]
    spec: CaptureSpec


def capture_shard(subject, job: ShardJob) -> Capture:
    """Capture one shard's inputs (runs on the worker; the driver writes the result)."""
    return capture(subject, list(job.texts), job.spec, progress=False)


class Store:
    """A dataset captured into shards, with a Parquet index; ``lens.analyze(store)`` streams over it.

    ``store.query(sql)`` runs DuckDB over the index as a view named ``heads`` (columns in
    ``INDEX_COLUMNS``). Which heads are dormant (s(x) >= 0.5) on at least 90% of inputs::

        store.query('''SELECT layer, head, avg((dormancy >= 0.5)::INT) AS dormant_share
                       FROM heads GROUP BY layer, head HAVING dormant_share >= 0.9 ORDER BY layer, head''')
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.path} is not a store (no {MANIFEST}): write one with "
                                    "lens capture --dataset FILE --out DIR")
        try:
            self.manifest = json.loads(manifest.read_text())
        except json.JSONDecodeError as err:
            raise CaptureFileError(f"{manifest} is not valid JSON ({err}); capture the store again") from None
        if self.manifest.get("format") != FORMAT:
            raise CaptureFileError(f"{manifest}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")

    @property
    def n_inputs(self) -> int:
        return self.manifest["n_inputs"]

    @property
    def n_shards(self) -> int:
        return self.manifest["n_shards"]

    @property
    def shard_size(self) -> int:
        return self.manifest["shard_size"]

    def __repr__(self) -> str:
        return (f"Store({self.path}: {self.manifest['model']}, {self.n_inputs} inputs in {self.n_shards} shard(s) "
                f"of {self.shard_size}, {len(self.missing())} missing)")

    def shard_dir(self, shard: int) -> Path:
        return self.path / SHARDS / f"{shard:05d}"

    def index_file(self, shard: int) -> Path:
        return self.path / INDEX / f"{shard:05d}.parquet"

    def offset(self, shard: int) -> int:
        return shard * self.shard_size

    def missing(self) -> list[int]:
        """Shards whose directory or index file is not there (not checked: their checksums)."""
        return [s for s in range(self.n_shards)
                if not (self.shard_dir(s) / "capture.json").is_file() or not self.index_file(s).is_file()]

    def load_shard(self, shard: int) -> Capture:
        """One shard's Capture (checksums verified by ``Capture.load``)."""
        return Capture.load(self.shard_dir(shard))

    def shards(self) -> Iterator[tuple[int, Capture]]:
        """(offset of its first input, Capture) for each shard in order, one in memory at a time."""
        gone = self.missing()
        if gone:
            raise ValueError(f"{self.path} is incomplete: shard(s) {gone[:10]}{' ...' if len(gone) > 10 else ''} "
                             "missing; finish it with lens capture ... --resume")
        for s in range(self.n_shards):
            yield self.offset(s), self.load_shard(s)

    def query(self, sql: str) -> pd.DataFrame:
        """Run DuckDB ``sql`` over the index, which it sees as a view named ``heads``; return a DataFrame.

        Which heads are dormant on at least 90% of inputs::

            SELECT layer, head, avg((dormancy >= 0.5)::INT) AS dormant_share FROM heads
            GROUP BY layer, head HAVING dormant_share >= 0.9 ORDER BY layer, head
        """
        files = _sql_path(self.path / INDEX / "*.parquet")
        con = duckdb.connect()
        try:
            con.execute(f"CREATE VIEW heads AS SELECT * FROM read_parquet('{files}')")
            return con.execute(sql).df()
        finally:
            con.close()


def index_frame(cap: Capture, offset: int) -> pd.DataFrame:
    """The index rows of one shard: one per (input, layer, head), see ``INDEX_COLUMNS``."""
    b, L, H = cap.n_inputs, cap.n_layers, cap.n_heads
    mask = later_queries(cap)[:, None, None, :]

    def per_input(name):
        return masked_mean(cap.stats[name], mask, dims=[-1]).float() if name in cap.stats else None

    cols: dict[str, torch.Tensor | None] = {
        "sink_mass": per_input("sink_mass"), "dormancy": sink_scores(cap) if "sink_mass" in cap.stats else None,
        "entropy": per_input("entropy"), "distance": per_input("distance"),
    }
    if "received" in cap.stats:
        rec = torch.where(real(cap)[:, None, None, :], cap.stats["received"].double(), torch.zeros(()).double())
        top = rec.argmax(-1)
        cols["top_key"] = top.int()
        cols["top_key_share"] = (rec.gather(-1, top[..., None])[..., 0] / rec.sum(-1).clamp(min=1e-30)).float()
    if "learned_sink_mass" in cap.stats:
        cols["learned_sink_mass"] = per_input("learned_sink_mass")
    i, layer, head = torch.meshgrid(torch.arange(b), torch.arange(L), torch.arange(H), indexing="ij")
    blocks = torch.tensor(cap.blocks)[layer.flatten()]  # layer = the block's number (hybrid models: not 0..L-1)
    data = {"input": (i.flatten() + offset).numpy().astype("int64"), "layer": blocks.numpy().astype("int16"),
            "head": head.flatten().numpy().astype("int16"),
            "tokens": cap.lengths[:, None, None].expand(b, L, H).flatten().numpy().astype("int32")}
    for name, v in cols.items():
        if v is not None:
            data[name] = v.flatten().numpy()
    return pd.DataFrame(data)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def write_shard(store: Store, shard: int, cap: Capture) -> None:
    """Write one shard's Capture, then its index file, each under a temporary name renamed into place."""
    final = store.shard_dir(shard)
    tmp = _tmp(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    cap.save(tmp)
    if final.exists():  # a corrupt shard being replaced: a crash between these two steps leaves it missing
        shutil.rmtree(final)
    os.rename(tmp, final)
    write_index(store, shard, cap)


def write_index(store: Store, shard: int, cap: Capture) -> None:
    final = store.index_file(shard)
    tmp = _tmp(final)
    write_parquet(index_frame(cap, store.offset(shard)), tmp)
    os.replace(tmp, final)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as a Parquet file, written by DuckDB (pandas' own writer would need pyarrow)."""
    con = duckdb.connect()
    try:
        con.register("frame", frame)
        con.execute(f"COPY frame TO '{_sql_path(path)}' (FORMAT PARQUET)")
    finally:
        con.close()


def _sql_path(path) -> str:
    return str(path).replace("'", "''")


def _shard_ok(store: Store, shard: int, n_expected: int) -> str | None:
    """None when the shard is complete and valid (index rebuilt from it when only that is missing), else why not."""
    d = store.shard_dir(shard)
    if not (d / "capture.json").is_file():
        return "missing"
    try:
        cap = Capture.load(d)
    except (CaptureFileError, FileNotFoundError) as err:
        return f"corrupt ({err})"
    if cap.n_inputs != n_expected:
        return f"holds {cap.n_inputs} inputs, expected {n_expected}"
    if not store.index_file(shard).is_file():
        write_index(store, shard, cap)
    return None


def capture_dataset(model, dataset: str | Path, out: str | Path, spec: CaptureSpec | None = None, *, executor=None,
                    shard_size: int = 64, resume: bool = False, on_shard: Callable[[int, Capture], None] | None = None,
                    echo: Callable[[str], None] = print, **fields) -> Store:
    """Capture every prompt of ``dataset`` with ``model`` into the store ``out`` (module docstring).

    spec: what each shard's capture records (``lens.CaptureSpec``; or its fields as keywords,
    e.g. ``stats=[...]``, ``backend=...``), recorded in the manifest. executor: from
    ``lens.record.make_executor`` (default local). resume: keep the valid shards of an
    existing store with the same manifest and compute the rest. on_shard: called by the
    driver after each shard is written (tests count writes with it). Returns the Store.
    Nine parameters (and the spec's fields as keywords): what to capture (model, dataset, out,
    spec) and how the run goes, each a separate keyword the command line and the tests set one
    by one.
    """
    spec = CaptureSpec.of(spec, **fields)
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    prompts = read_dataset(dataset)
    out = Path(out)
    n_shards = -(-len(prompts) // shard_size)
    manifest = {"format": FORMAT, "model": str(model), "shard_size": shard_size, "n_inputs": len(prompts),
                "n_shards": n_shards, "dataset": {"path": str(dataset), "sha256": file_sha256(Path(dataset))},
                "capture": spec.to_dict()}
    store = _open(out, manifest, resume)
    sizes = [len(prompts[s * shard_size:(s + 1) * shard_size]) for s in range(n_shards)]
    todo = []
    for s in range(n_shards):
        why = _shard_ok(store, s, sizes[s]) if resume else "new"
        if why is not None:
            if why.startswith("corrupt") or why.startswith("holds"):
                echo(f"shard {s}: {why}: recomputing")
            todo.append(s)
    if resume:
        echo(f"{n_shards - len(todo)} of {n_shards} shard(s) complete; capturing {len(todo)}")
    jobs = [ShardJob(s, tuple(prompts[s * shard_size:(s + 1) * shard_size]), spec) for s in todo]
    executor = executor or make_executor("local")
    for i, cap in executor.run(model, jobs, capture_shard, desc="shards"):
        shard = jobs[i].shard
        write_shard(store, shard, cap)
        if on_shard is not None:
            on_shard(shard, cap)
    return store


def _open(out: Path, manifest: dict, resume: bool) -> Store:
    """The store at ``out``: a new one with ``manifest``, or (``resume``) the existing one if it was made the same way."""
    if (out / MANIFEST).is_file():
        if not resume:
            raise FileExistsError(f"{out} already holds a store: pass --resume to finish it, or choose another --out")
        old = Store(out).manifest
        differ = [k for k in ("model", "shard_size", "n_inputs") if old.get(k) != manifest[k]]
        differ += [f"capture {k}" for k, v in manifest["capture"].items() if _recorded_capture(old).get(k) != v]
        if old.get("dataset", {}).get("sha256") != manifest["dataset"]["sha256"]:
            differ.append("dataset (SHA-256)")
        if differ:
            raise ValueError(f"{out} was captured with another {', '.join(differ)}: --resume continues the same "
                             "capture; choose another --out for a new one")
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a store: choose an empty or new --out")
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    (out / INDEX).mkdir(parents=True, exist_ok=True)
    for stale in [*(out / SHARDS).glob(".*.tmp-*"), *(out / INDEX).glob(".*.tmp-*")]:  # left by a killed driver
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if not (out / MANIFEST).is_file():
        _write_json_atomic(out / MANIFEST, manifest)
    return Store(out)


def _recorded_capture(manifest: dict) -> dict:
    """The capture spec a manifest records; stores written before the spec recorded only stats and backend."""
    if "capture" in manifest:
        return manifest["capture"]
    return CaptureSpec(stats=manifest.get("stats", "default"), backend=manifest.get("backend", "auto")).to_dict()

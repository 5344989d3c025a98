"""The queries behind the Runs and Census pages: the DuckDB of ``lens run`` and a store's Parquet index.

No Dash here: plain functions and two small classes that return DataFrames, so the pages
stay thin and the tests check the numbers without a browser. Everything scales with the
size of the answer, not of the data: the run list is one ``list_runs`` plus one query of
the summary table; a store is read through DuckDB over its index (``Store.query``), and
only the one shard that holds an input is loaded to draw that input's token strip.

Results are cached per app. The runs database grows while the dashboard is open (``lens
run`` appends to it), so its cache is keyed by the file's size and modification time; a
store's index is written once, so its cache is keyed by the question alone.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

import lens
from lens.experiments import COMPLETE, LIVE_STATES, list_runs, query_runs, run_summaries

LIVE_TTL_S = 10.0
CONDITIONS = ("baseline", "edited", "delta")


# --- runs ---------------------------------------------------------------------------------------
_OPEN: dict = {}
_OPEN_LOCK = threading.Lock()


class _Memo:
    """A thread-safe cache of computed answers, emptied whenever ``stamp`` changes (None: never)."""

    def __init__(self):
        self._cache: dict = {}
        self._stamp = None
        self._lock = threading.Lock()

    def get(self, key, make, stamp=None):
        with self._lock:
            if stamp != self._stamp:
                self._cache.clear()
                self._stamp = stamp
            if key in self._cache:
                return self._cache[key]
        value = make()  # outside the lock: a slow query does not hold other readers
        with self._lock:
            self._cache[key] = value
        return value

    def forget(self, key) -> None:
        with self._lock:
            self._cache.pop(key, None)


class Runs:
    """Read-only views of one runs database (``lens run --db FILE``), cached until the file changes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._memo = _Memo()

    @classmethod
    def of(cls, path: str | Path) -> Runs:
        """The reader of ``path``, one per file in the process (the layout and the callbacks share its cache)."""
        path = Path(path).resolve()
        with _OPEN_LOCK:
            if path not in _OPEN:
                _OPEN[path] = cls(path)
            return _OPEN[path]

    def stamp(self) -> list:
        """The file's state (size and modification time of it and of its write-ahead log): the cache's key.

        DuckDB appends to FILE.wal first and folds it into FILE at a checkpoint, so both are watched.
        """
        wal = self.path.with_name(self.path.name + ".wal")
        return [[st.st_size, st.st_mtime_ns] for st in (self.path.stat(), wal.stat() if wal.exists() else None)
                if st is not None]

    def _cached(self, key, make):
        return self._memo.get(key, make, stamp=self.stamp())

    def _query(self, sql: str, params=()) -> pd.DataFrame:
        """Run ``sql``, in which ``{runs}`` stands for the runs table with every current column."""
        return query_runs(self.path, sql, params)

    def metrics(self) -> list[str]:
        """The metrics any run summarised, accuracy first."""
        def make():
            got = self._query("SELECT DISTINCT metric FROM summary")["metric"].tolist()
            return sorted(got, key=lambda m: (m != "accuracy", m))
        return self._cached("metrics", make)

    def table(self, metric: str = "accuracy") -> pd.DataFrame:
        """Every run, newest first: ``list_runs``' columns (its state, delta and delta CI) plus the
        baseline and edited CIs, the sweep values as text and the run's spec name.

        A run in progress can end without writing to the file (killed: it becomes interrupted),
        so a list that shows one is read again after ``LIVE_TTL_S``.
        """
        def read():
            return time.monotonic(), _runs_table(self.path, metric, self._query)

        made, df = self._cached(("table", metric), read)
        if time.monotonic() - made > LIVE_TTL_S and df["state"].isin(LIVE_STATES).any():
            self._memo.forget(("table", metric))  # read once more (not recursively: a slow read stays stale)
            made, df = self._cached(("table", metric), read)
        return df

    def compare(self, run_ids) -> pd.DataFrame:
        """The summaries of complete runs as long rows (run_id, metric, condition, value, ci_low, ci_high, n).

        ValueError (``compare_runs``' message: which run, and why it has no results) when a run
        is unknown or not complete.
        """
        ids = list(dict.fromkeys(run_ids))
        df = run_summaries(self.path, ids)
        order = {r: i for i, r in enumerate(ids)}
        df["_r"], df["_c"] = df["run_id"].map(order), df["condition"].map({c: i for i, c in enumerate(CONDITIONS)})
        return df.sort_values(["metric", "_c", "_r"]).drop(columns=["_r", "_c"]).reset_index(drop=True)

    def spec(self, run_id: str) -> tuple[str, dict]:
        """(the spec file's TOML as the run stored it, the run's row) for any run, finished or not."""
        df = self._query("SELECT run_id, name, status, spec_path, spec_toml, sweep, error FROM "
                         "{runs} r WHERE run_id = ?", [run_id])
        if not len(df):
            raise ValueError(f"no run {run_id} in {self.path}")
        row = df.iloc[0].to_dict()
        return row["spec_toml"] or "", row

    def sweeps(self) -> pd.DataFrame:
        """The sweeps in the database: one row per (spec name, spec file) whose runs carry swept values.

        Columns: sweep (a label), name, spec_path, keys (the swept keys, in the spec's order), runs.
        A sweep is what one ``lens run SPEC`` with a ``[sweep]`` wrote: its runs share the spec's
        name and file and each records its values in ``runs.sweep`` (``_spec_sweep``).
        """
        def make():
            df = self._query("SELECT run_id, name, spec_path, sweep, created FROM {runs} r "
                             "WHERE sweep IS NOT NULL AND sweep NOT IN ('', '{}') ORDER BY created, run_id")
            rows = []
            groups = list(df.groupby(["name", "spec_path"], sort=False, dropna=False))
            names = [name for (name, _), _ in groups]
            for (name, spec_path), g in groups:
                keys = list(dict.fromkeys(k for sw in g["sweep"] for k in json.loads(sw)))
                label = f"{name} ({len(g)} runs)"
                if names.count(name) > 1:  # one name, several spec files: say which
                    label += f", {spec_path}"
                rows.append({"sweep": label, "name": name, "spec_path": spec_path, "keys": keys, "runs": len(g)})
            return pd.DataFrame(rows, columns=["sweep", "name", "spec_path", "keys", "runs"])
        return self._cached("sweeps", make)

    def sweep_cells(self, sweep: str, metric: str, condition: str = "delta") -> pd.DataFrame:
        """One row per complete run of ``sweep`` (a label from ``sweeps``) with its swept values and
        ``metric`` under ``condition``: run_id, one column per swept key (a short label of the
        value), value, ci_low, ci_high, n. Runs without that summary (a run without edits has no
        delta) have NaN values."""
        def make():
            sw = self.sweeps()
            row = sw[sw["sweep"] == sweep]
            if not len(row):
                raise ValueError(f"no sweep {sweep!r} in {self.path}")
            name, spec_path, keys = row.iloc[0]["name"], row.iloc[0]["spec_path"], row.iloc[0]["keys"]
            where = "r.spec_path IS NULL" if spec_path is None or pd.isna(spec_path) else "r.spec_path = ?"
            params = [condition, metric, name] + ([] if "NULL" in where else [spec_path])
            df = self._query(f"""
                SELECT r.run_id, r.sweep, s.value, s.ci_low, s.ci_high, s.n FROM {{runs}} r
                LEFT JOIN summary s ON s.run_id = r.run_id AND s.condition = ? AND s.metric = ?
                WHERE r.status = '{COMPLETE}' AND r.name = ? AND {where} AND r.sweep NOT IN ('', '{{}}')
                ORDER BY r.created, r.run_id""", params)
            values = [json.loads(s) for s in df["sweep"]]
            for k in keys:
                df[k] = [value_label(v.get(k)) for v in values]
            return df[["run_id", *keys, "value", "ci_low", "ci_high", "n"]].reset_index(drop=True)
        return self._cached(("cells", sweep, metric, condition), make)


def _runs_table(path, metric: str, query) -> pd.DataFrame:
    runs = list_runs(path, metric=metric)
    extra = query("""
        SELECT r.run_id, r.sweep, r.spec_path, b.ci_low AS baseline_low, b.ci_high AS baseline_high,
               e.ci_low AS edited_low, e.ci_high AS edited_high, b.n AS n
        FROM {runs} r
        LEFT JOIN summary b ON b.run_id = r.run_id AND b.condition = 'baseline' AND b.metric = ?
        LEFT JOIN summary e ON e.run_id = r.run_id AND e.condition = 'edited' AND e.metric = ?""", [metric, metric])
    df = runs.merge(extra, on="run_id", how="left")
    df["sweep"] = [describe_sweep(s) for s in df["sweep"]]
    df["created"] = pd.to_datetime(df["created"]).dt.strftime("%Y-%m-%d %H:%M:%S")
    df = df.rename(columns={"status": "state", "name": "spec"})
    cols = ["run_id", "spec", "model", "task", "method", "state", "baseline", "baseline_low", "baseline_high",
            "edited", "edited_low", "edited_high", "delta", "delta_low", "delta_high", "n", "sweep", "seed",
            "n_test", "created", "error"]
    return df[cols].reset_index(drop=True)


def value_label(v) -> str:
    """A short label of one swept value: numbers and strings as written, an edit list as
    'ablate L1; scale_attention L1 x0.5' ('no edits' for [])."""
    if isinstance(v, list) and all(isinstance(e, dict) for e in v):
        if not v:
            return "no edits"
        parts = []
        for e in v:
            s = str(e.get("type", "edit"))
            if e.get("layer") is not None:
                s += f" L{e['layer']}"
            if e.get("head") is not None:
                s += f"H{e['head']}"
            for k, mark in (("factor", "x"), ("bias", "+"), ("mode", ""), ("keys", "keys ")):
                if k in e:
                    s += f" {mark}{e[k]}"
            parts.append(s)
        return "; ".join(parts)
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(", ", "=")) if isinstance(v, (list, dict)) else str(v)


def describe_sweep(sweep_json) -> str:
    """'seed = 0, edits = ablate L1' for a run's stored sweep values; '' outside a sweep."""
    if sweep_json is None or (isinstance(sweep_json, float) and np.isnan(sweep_json)) or not sweep_json:
        return ""
    values = json.loads(sweep_json)
    return ", ".join(f"{k} = {value_label(v)}" for k, v in values.items())


def sweep_grid(cells: pd.DataFrame, x: str, y: str) -> dict:
    """The heatmap of a sweep over two swept keys: values in first-seen order, the mean of each cell's runs
    (other swept keys vary within a cell) and every run's value and CI for the hover.

    Returns {"x": labels, "y": labels, "z": [[mean or None]], "runs": [[[(run_id, value, lo, hi,
    other keys)]]], "others": keys averaged over}.
    """
    if x == y:
        raise ValueError("pick two different swept keys")
    xs = list(dict.fromkeys(cells[x])) if x in cells else [""]
    ys = list(dict.fromkeys(cells[y])) if y in cells else [""]
    keys = [c for c in cells.columns if c not in ("run_id", "value", "ci_low", "ci_high", "n")]
    others = [k for k in keys if k not in (x, y)]
    z = [[None] * len(xs) for _ in ys]
    runs = [[[] for _ in xs] for _ in ys]
    for r in cells.itertuples(index=False):
        d = r._asdict()
        i = ys.index(d[y]) if y in d else 0
        j = xs.index(d[x]) if x in d else 0
        runs[i][j].append((d["run_id"], d["value"], d["ci_low"], d["ci_high"], {k: d[k] for k in others}))
    for i in range(len(ys)):
        for j in range(len(xs)):
            vals = [v for _, v, *_ in runs[i][j] if v is not None and not pd.isna(v)]
            z[i][j] = float(np.mean(vals)) if vals else None
    return {"x": xs, "y": ys, "z": z, "runs": runs, "others": others}


# --- census -------------------------------------------------------------------------------------
#: Per-input statistics of the store's index a page may show, in this order when present.
STATISTICS = ("sink_mass", "dormancy", "entropy", "distance", "top_key_share", "learned_sink_mass")
#: The dormancy threshold: an input on which s(x) >= 0.5 is one on which the head is dormant
#: (METHODS sec 2; the example query in ``lens.store._store``'s docstring).
DORMANT_AT = 0.5
OUTLIER_KINDS = ("highest", "lowest", "|z| largest")


class Census:
    """Per-head distributions, dormant shares and outlier inputs of one store, by DuckDB over its index.

    Every answer is cached (the index of a store does not change); at most ``SHARDS_KEPT``
    shards stay in memory for token strips.
    """

    SHARDS_KEPT = 2

    def __init__(self, store: lens.Store):
        self.store = store
        self._memo = _Memo()  # the index of a store does not change: no stamp
        self._shards: OrderedDict[int, lens.Capture] = OrderedDict()
        self._lock = threading.Lock()

    def _cached(self, key, make):
        return self._memo.get(key, make)

    def _stat(self, stat: str) -> str:
        if stat not in self.statistics():
            raise ValueError(f"unknown statistic {stat!r}; this store has {', '.join(self.statistics())}")
        return stat  # one of a fixed list of column names: safe to put in SQL

    def info(self) -> dict:
        """layers (the block numbers with attention), n_layers (how many), n_heads, n_inputs (with index
        rows), columns, model."""
        def make():
            cols = self.store.query("SELECT * FROM heads LIMIT 0").columns.tolist()
            shape = self.store.query("SELECT max(head) + 1 AS h, count(DISTINCT input) AS n FROM heads").iloc[0]
            layers = [int(x) for x in self.store.query("SELECT DISTINCT layer FROM heads ORDER BY layer")["layer"]]
            return {"layers": layers, "n_layers": len(layers), "n_heads": int(shape["h"]),
                    "n_inputs": int(shape["n"]), "columns": cols, "model": self.store.manifest.get("model", "?")}
        return self._cached("info", make)

    def statistics(self) -> list[str]:
        cols = self.info()["columns"]
        return [s for s in STATISTICS if s in cols]

    def distributions(self, stat: str, layer: int | None = None) -> pd.DataFrame:
        """Per head: n, min, q1, median, q3, max, mean, std of ``stat`` across inputs (one layer, or all)."""
        stat = self._stat(stat)
        where = "" if layer is None else f"WHERE layer = {int(layer)}"

        def make():
            return self.store.query(f"""
                SELECT layer, head, count({stat}) AS n, min({stat}) AS min,
                       quantile_cont({stat}, 0.25) AS q1, median({stat}) AS median,
                       quantile_cont({stat}, 0.75) AS q3, max({stat}) AS max, avg({stat}) AS mean,
                       stddev_samp({stat}) AS std
                FROM heads {where} GROUP BY layer, head ORDER BY layer, head""")
        return self._cached(("dist", stat, layer), make)

    def dormant_share(self, threshold: float = DORMANT_AT) -> pd.DataFrame:
        """Per head: the share of inputs on which s(x) >= threshold (dormant_share), and n inputs."""
        def make():
            return self.store.query(f"""
                SELECT layer, head, avg((dormancy >= {float(threshold)})::INT) AS dormant_share,
                       avg(dormancy) AS mean_dormancy, count(*) AS n
                FROM heads WHERE dormancy IS NOT NULL GROUP BY layer, head ORDER BY layer, head""")
        if "dormancy" not in self.info()["columns"]:
            raise ValueError("this store has no dormancy column (captured without sink_mass)")
        return self._cached(("dormant", float(threshold)), make)

    def outliers(self, stat: str, layer: int, head: int, kind: str = "|z| largest", k: int = 10) -> pd.DataFrame:
        """The ``k`` inputs on which head (layer, head) is most extreme by ``stat``: input, tokens, value, z
        (z = (value - mean) / sd over all inputs of that head), rank."""
        stat = self._stat(stat)
        if kind not in OUTLIER_KINDS:
            raise ValueError(f"kind must be one of {OUTLIER_KINDS}, got {kind!r}")
        order = {"highest": "value DESC", "lowest": "value ASC", "|z| largest": "abs(z) DESC NULLS LAST"}[kind]

        def make():
            return self.store.query(f"""
                WITH h AS (SELECT input, tokens, {stat} AS value FROM heads
                           WHERE layer = {int(layer)} AND head = {int(head)} AND {stat} IS NOT NULL),
                     m AS (SELECT avg(value) AS mu, stddev_samp(value) AS sd FROM h)
                SELECT input, tokens, value, CASE WHEN sd > 0 THEN (value - mu) / sd END AS z
                FROM h, m ORDER BY {order}, input LIMIT {int(k)}""").assign(rank=lambda f: np.arange(1, len(f) + 1))
        return self._cached(("outliers", stat, int(layer), int(head), kind, int(k)), make)

    def shard(self, i: int) -> lens.Capture:
        with self._lock:
            if i in self._shards:
                self._shards.move_to_end(i)
                return self._shards[i]
        cap = self.store.load_shard(i)
        with self._lock:
            self._shards[i] = cap
            while len(self._shards) > self.SHARDS_KEPT:
                self._shards.popitem(last=False)
        return cap

    def strip(self, input: int, layer: int, head: int, stat: str) -> tuple[list[str], np.ndarray, str]:
        """(tokens, per-position values, what they are) of one input for head (layer, head).

        The per-position form of each index column: the row statistic of each query for
        sink_mass, entropy, distance and learned_sink_mass, A[i, 0] plus the learned sink for
        dormancy (the index value is their mean over queries i >= 1, so query 0 is blank), and
        each key's share of the attention received for top_key_share.
        """
        stat = self._stat(stat)
        n_inputs = self.store.n_inputs
        if not 0 <= int(input) < n_inputs:
            raise ValueError(f"input {input} is not in this store (0..{n_inputs - 1})")
        shard, row = divmod(int(input), self.store.shard_size)
        cap = self.shard(shard)
        n = int(cap.lengths[row])
        st = cap.stats
        layer = cap.layer_index(int(layer))  # the index rows name blocks; the tensors count attention layers

        def per_query(name):
            v = st[name][row, layer, head, :n].double().numpy().copy()
            v[0] = np.nan  # query 0 sees only key 0; the index means are over i >= 1
            return v

        if stat == "dormancy":
            v = per_query("sink_mass")
            if "learned_sink_mass" in st:
                v = v + per_query("learned_sink_mass")
            what = "A[i, 0] (+ learned sink)"
        elif stat == "top_key_share":
            rec = st["received"][row, layer, head, :n].double().numpy()
            v, what = rec / max(rec.sum(), 1e-30), "share of attention received"
        else:
            v, what = per_query(stat), stat
        return list(cap.str_tokens[row]), v, what

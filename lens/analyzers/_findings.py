"""Findings (what one analyzer returns) and the Atlas (what ``analyze`` returns).

A Findings is a tidy pandas table plus the parameters that produced it, so a number
never travels without its thresholds: the parameters live in ``findings.params`` and,
for code that only keeps the table, in ``findings.frame.attrs["params"]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["Atlas", "Findings"]

# Columns that identify a row; every other column is a measurement.
KEY_COLUMNS = ("capture", "checkpoint", "input", "layer", "head", "pos", "rank")


@dataclass(frozen=True, eq=False)
class Findings:
    """One analyzer's result.

    name: the analyzer ("sinks", "value_drains", ...).
    frame: one row per (layer, head), per layer, per token or per input, as ``level`` says.
    params: every threshold and constant used (JSON-able); also in ``frame.attrs``.
    summary: the headline figures (JSON-able), e.g. ``{"sink_rate": 87.2}``.
    text: the same headline in one or two human lines, for ``print(atlas)``.
    """

    name: str
    frame: pd.DataFrame
    params: dict[str, Any]
    level: str = "head"
    summary: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def __post_init__(self) -> None:
        self.frame.attrs.update(analyzer=self.name, level=self.level, params=dict(self.params),
                                summary=dict(self.summary))

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        return f"Findings({self.name}: {len(self.frame)} rows per {self.level}; {params})"

    def __str__(self) -> str:
        head = f"{self!r}\n{self.text}" if self.text else repr(self)
        with pd.option_context("display.max_columns", 12, "display.width", 120):
            return f"{head}\n{self.frame.head(10).to_string()}"

    def to_dict(self, rows: bool = True) -> dict:
        """JSON-able dict: name, level, params, summary and (with ``rows``) the table as records."""
        out = {"name": self.name, "level": self.level, "params": _jsonable(self.params),
               "summary": _jsonable(self.summary)}
        if rows:
            out["rows"] = json.loads(self.frame.to_json(orient="records"))
        return out


@dataclass(frozen=True, eq=False)
class Atlas:
    """Every analyzer's Findings for one Capture, with a one-screen text summary.

    ``atlas["sinks"]`` is one Findings; ``atlas.to_frame()`` joins every per-head table
    into one row per (layer, head); ``atlas.skipped`` says which analyzers did not run and why.
    """

    findings: dict[str, Findings]
    skipped: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Findings:
        if name not in self.findings:
            why = f" (skipped: {self.skipped[name]})" if name in self.skipped else ""
            raise KeyError(f"no findings named {name!r}{why}; have {sorted(self.findings)}")
        return self.findings[name]

    def __contains__(self, name: object) -> bool:
        return name in self.findings

    def __iter__(self):
        return iter(self.findings.values())

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head): the columns of every per-head Findings side by side."""
        frames = [f.frame.set_index(["layer", "head"]) for f in self.findings.values() if f.level == "head"]
        if not frames:
            return pd.DataFrame(columns=["layer", "head"])
        out = pd.concat(frames, axis=1).reset_index()
        out.attrs["params"] = {f.name: dict(f.params) for f in self.findings.values()}
        return out

    def to_dict(self, rows: bool = False) -> dict:
        """JSON-able dict: meta, each Findings' params and summary (and rows), the per-head table."""
        return {
            "meta": _jsonable(self.meta),
            "findings": {n: f.to_dict(rows=rows) for n, f in self.findings.items()},
            "skipped": dict(self.skipped),
            "heads": json.loads(self.to_frame().to_json(orient="records")),
        }

    def to_json(self, rows: bool = False, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(rows=rows), indent=indent)

    def __repr__(self) -> str:
        return f"Atlas({self.meta.get('model', '?')}: {', '.join(self.findings)})"

    def __str__(self) -> str:
        m = self.meta
        blocks, n_blocks = m.get("blocks"), m.get("n_blocks")
        layers = (f"{n_blocks} layers (attention in blocks {blocks})"
                  if blocks is not None and n_blocks is not None and len(blocks) != n_blocks
                  else f"{m.get('n_layers', '?')} layers")
        lines = [f"Atlas of {m.get('model', '?')}: {m.get('n_inputs', '?')} input(s), T = {m.get('T', '?')}, "
                 f"{layers} x {m.get('n_heads', '?')} heads"]
        width = max([len(n) + 2 for n in (*self.findings, *self.skipped)] + [16])  # names line up, then one space
        for f in self.findings.values():
            if f.text:
                for n, line in enumerate(f.text.splitlines()):
                    lines.append(f"{f.name + ':' if n == 0 else '':<{width}}{line}")
        for name, why in self.skipped.items():
            lines.append(f"{name + ':':<{width}}skipped ({why})")
        return "\n".join(lines)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _jsonable(x: Any) -> Any:
    """Plain Python (lists, floats, ints, str, None) for JSON; NaN becomes None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 0) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)

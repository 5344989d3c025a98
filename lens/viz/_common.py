"""Helpers shared by the figure builders: input checks, per-head tables, token labels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lens.analyzers import Atlas, Findings

LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50))


def frame_of(data, what: str) -> pd.DataFrame:
    """The table behind ``data``: a Findings' frame, an Atlas' per-head table, or a DataFrame as is."""
    if isinstance(data, Findings):
        return data.frame
    if isinstance(data, Atlas):
        return data.to_frame()
    if isinstance(data, pd.DataFrame):
        return data
    raise TypeError(f"{what} takes a Findings, an Atlas or a pandas DataFrame, got {type(data).__name__}")


def need_columns(frame: pd.DataFrame, what: str, *columns: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs the column(s) {missing}; the table has {list(frame.columns)}")


def as_array(x, what: str, ndim: int | None = None) -> np.ndarray:
    """A float numpy array from a tensor, array or nested list; checks the number of dimensions."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=float)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


#: Marks for whitespace in token labels. A leading space is a middle dot: visible but quiet,
#: and unlike the open box (U+2423), which the default plotly font draws like a subscript
#: "u" ("\u2423and" read as "uand"), it cannot be mistaken for a letter.
SPACE_MARK, NEWLINE_MARK, TAB_MARK = "\u00b7", "\u21b5", "\u2192"


def marked(tok: str) -> str:
    """A token with its whitespace made visible (leading space, newlines, tabs), not shortened: for hovers."""
    s = str(tok).replace("\n", NEWLINE_MARK).replace("\t", TAB_MARK)
    return SPACE_MARK + s[1:] if s.startswith(" ") else s


def clean(tok: str) -> str:
    """A token as a short, visible label: ``marked``, cut to 12 characters with an ellipsis."""
    s = marked(tok)
    return s if len(s) <= 12 else s[:11] + "\u2026"


def tick_labels(tokens: Sequence[str], positions: Sequence[int], max_labels: int) -> tuple[list[int], list[str]]:
    """Tick positions and labels ("pos tok"), thinned to at most ``max_labels`` ticks."""
    positions = list(positions)
    if not positions:
        return [], []
    step = max(1, math.ceil(len(positions) / max_labels))
    vals = positions[::step]
    return vals, [f"{p} {clean(tokens[p])}" if p < len(tokens) else str(p) for p in vals]


def nan_to_none(values) -> list:
    """A list with NaN as None (plotly shows a gap; JSON has no NaN)."""
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in values]

"""Small helpers every analyzer uses: masks over real positions, per-head tables, checks."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from lens.record import Capture


def need(cap: Capture, *names: str, analyzer: str) -> None:
    """Fail clearly when the capture lacks a statistic the analyzer reads."""
    if not isinstance(cap, Capture):
        raise TypeError(f"{analyzer} takes a lens.Capture, got {type(cap).__name__}")
    missing = [n for n in names if n not in cap.stats]
    if missing:
        raise KeyError(f"{analyzer} needs the statistic(s) {missing}, which this capture did not record "
                       f"(it has {sorted(cap.stats)}); capture again with stats including {missing}")


def missing(cap: Capture, *names: str) -> list[str]:
    return [n for n in names if n not in cap.stats]


def real(cap: Capture) -> torch.Tensor:
    """[batch, pos] bool: the real (non-padding) positions."""
    pos = torch.arange(cap.tokens.shape[1])
    return pos[None] < cap.lengths[:, None]


def later_queries(cap: Capture) -> torch.Tensor:
    """[batch, pos] bool: real queries i >= 1 (position 0 sees only itself, so it says nothing)."""
    m = real(cap)
    m[:, 0] = False
    return m


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Mean of ``x`` over ``dims`` where ``mask`` (broadcastable) is True; NaN where nothing is."""
    m = mask.to(torch.float64).expand_as(x) if mask.shape != x.shape else mask.to(torch.float64)
    total = (x.double() * m).sum(dim=tuple(dims))
    count = m.sum(dim=tuple(dims))
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def seq_len_param(cap: Capture) -> int | list[int]:
    """T as recorded in params: one int when every input has the same length, else [min, max]."""
    lo, hi = int(cap.lengths.min()), int(cap.lengths.max())
    return lo if lo == hi else [lo, hi]


def head_frame(layers: int | Sequence[int], n_heads: int, **columns: torch.Tensor) -> pd.DataFrame:
    """A per-(layer, head) table from ``[layer, head]`` tensors, rows in (layer, head) order.

    ``layers``: the block number of each row of the tensors (``Capture.blocks``; a count means
    0..n-1), so a hybrid model's findings name its real blocks."""
    blocks = torch.arange(layers) if isinstance(layers, int) else torch.tensor(list(layers), dtype=torch.long)
    layer = blocks.repeat_interleave(n_heads)
    head = torch.arange(n_heads).repeat(len(blocks))
    data = {"layer": layer.numpy(), "head": head.numpy()}
    for name, value in columns.items():
        data[name] = value.reshape(-1).cpu().numpy()
    return pd.DataFrame(data)


def block_numbers(cap: Capture, index: torch.Tensor) -> torch.Tensor:
    """Positions on the attention statistics' layer axis -> the blocks they are (``Capture.blocks``)."""
    return torch.tensor(cap.blocks, dtype=torch.long)[index]


def capture_heads(cap: Capture, heads, analyzer: str) -> list[tuple[int, int]]:
    """``heads`` as (block, head) pairs checked against the capture (None: every head of every attention block)."""
    if heads is None:
        return [(l, h) for l in cap.blocks for h in range(cap.n_heads)]
    heads = [(int(l), int(h)) for l, h in heads]
    bad = [(l, h) for l, h in heads if l not in cap.blocks or not 0 <= h < cap.n_heads]
    if bad:
        raise ValueError(f"{analyzer}: no head {bad} in this capture (layers {_ranges(cap.blocks)}, "
                         f"heads 0..{cap.n_heads - 1})")
    return heads


def _ranges(blocks: Sequence[int]) -> str:
    return f"0..{len(blocks) - 1}" if list(blocks) == list(range(len(blocks))) else str(list(blocks))


def window_param(cap: Capture) -> int:
    """The WAAD window W the capture's kernel used (METHODS sec 4 default 10)."""
    return int((cap.meta.get("options") or {}).get("window", 10))


def same_shape(captures: Sequence[Capture], analyzer: str) -> tuple[tuple[int, ...], int]:
    """(blocks with attention, n_heads) shared by every capture; several captures must describe one model shape."""
    if not captures:
        raise ValueError(f"{analyzer} needs at least one Capture")
    shapes = {(c.blocks, c.n_heads) for c in captures}
    if len(shapes) != 1:
        raise ValueError(f"{analyzer}: the captures have different (layers, heads): {sorted(shapes)}")
    return shapes.pop()


def token_at(cap: Capture, b: int, pos: int) -> str:
    toks = cap.str_tokens[b] if b < len(cap.str_tokens) else []
    return toks[pos] if 0 <= pos < len(toks) else ""


def top_heads(values: torch.Tensor, n: int = 3, largest: bool = True, fmt: str = "{:.2f}",
              layers: int | Sequence[int] | None = None) -> str:
    """'L3H1=0.91, L0H2=0.80' for the ``n`` extreme entries of a ``[layer, head]`` tensor (NaN skipped);
    ``layers``: the block number of each row (``Capture.blocks``; default 0..L-1)."""
    flat = values.reshape(-1).double()
    n_heads = values.shape[-1]
    blocks = list(range(values.shape[0])) if layers is None or isinstance(layers, int) else list(layers)
    ok = ~torch.isnan(flat)
    idx = torch.nonzero(ok).flatten()
    if idx.numel() == 0:
        return "-"
    order = flat[idx].argsort(descending=largest, stable=True)[:n]
    return ", ".join(f"L{blocks[int(i) // n_heads]}H{int(i) % n_heads}={fmt.format(float(flat[i]))}" for i in idx[order])

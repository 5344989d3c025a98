"""Activation patching (residual stream, attention/MLP outputs, each head), path and edge patching.

Modes (``mode=``): ``"denoise"`` runs the corrupted prompts and patches in the clean
activation (what restores the answer); ``"resample"`` runs the clean prompts and patches in
the corrupted activation; ``"mean"`` patches in the mean over the clean prompts (per
position); ``"zero"`` patches in zeros. Scores are normalised by the clean-corrupted gap:
denoise ``(m - m_corr) / (m_clean - m_corr)`` (1 = fully restored), the others
``(m - m_clean) / (m_clean - m_corr)`` (-1 = as bad as the corrupted prompt).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from lens.circuits._runs import Patch, RunSpec, last_logits, run
from lens.circuits._graph import Graph
from lens.circuits._metrics import get_metric
from lens.circuits._pairs import PromptPairs

MODES = ("denoise", "resample", "mean", "zero")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown patching mode {mode!r}; known: {', '.join(MODES)}")


def align(values: torch.Tensor, src_lengths: torch.Tensor, dst_lengths: torch.Tensor, width: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move per-position ``values`` ``[batch, pos_src, ...]`` onto another run's positions, last token on last token.

    Returns ``(aligned [batch, width, ...], mask [batch, width])``; mask is False where the
    destination position has no counterpart (the source prompt is shorter) or is padding.
    """
    t = torch.arange(width)[None, :]
    src = t - dst_lengths[:, None] + src_lengths[:, None]
    mask = (t < dst_lengths[:, None]) & (src >= 0) & (src < src_lengths[:, None])
    idx = src.clamp(0, values.shape[1] - 1)
    gather = idx.view(*idx.shape, *([1] * (values.ndim - 2))).expand(-1, -1, *values.shape[2:])
    return values.gather(1, gather.to(values.device)), mask


def valid_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < lengths[:, None]


def position_mask(lengths: torch.Tensor, width: int, positions) -> torch.Tensor:
    """``[batch, pos]`` bool: ``"all"`` real tokens, ``"last"`` the last one, or offsets from the end (-1 = last)."""
    if positions == "all":
        return valid_mask(lengths, width)
    if positions == "last":
        positions = [-1]
    if isinstance(positions, str):
        raise ValueError(f"positions must be 'all', 'last' or offsets from the end, got {positions!r}")
    m = torch.zeros(len(lengths), width, dtype=torch.bool)
    for off in positions:
        if off >= 0:
            raise ValueError(f"positions are offsets from the last token (-1 = last), got {off}")
        p = lengths + off
        ok = p >= 0
        m[torch.arange(len(lengths))[ok], p[ok]] = True
    return m


class _Setup:
    """Clean and corrupted runs of one batch of pairs: baselines and recorded activations."""

    def __init__(self, subject, pairs: PromptPairs, metric: str, record=("z", "attn", "mlp", "resid"),
                 senders: bool = False):
        self.subject, self.pairs = subject, pairs
        self.metric_name, self.metric = metric, get_metric(metric)
        rec = frozenset(record) | ({"senders"} if senders else frozenset())
        lc, lr = pairs.clean_lengths, pairs.corrupted_lengths
        logits, self.clean = run(subject, pairs.clean, lc, RunSpec(record=rec))
        self.clean_last = last_logits(logits, lc).float()
        logits, self.corr = run(subject, pairs.corrupted, lr, RunSpec(record=rec))
        self.corr_last = last_logits(logits, lr).float()
        ans = pairs.answers.to(self.clean_last.device)
        self.answers = ans
        self.m_clean = float(self.metric(self.clean_last, ans, self.clean_last).mean())
        self.m_corr = float(self.metric(self.corr_last, ans, self.clean_last).mean())

    def score(self, last: torch.Tensor) -> float:
        return float(self.metric(last.float(), self.answers, self.clean_last).mean())

    def gap(self) -> float:
        g = self.m_clean - self.m_corr
        return g if abs(g) > 1e-12 else float("nan")


def _base(setup: _Setup, mode: str):
    """(tokens, lengths, width) of the run that gets patched."""
    p = setup.pairs
    if mode == "denoise":
        return p.corrupted, p.corrupted_lengths
    return p.clean, p.clean_lengths


def _source(setup: _Setup, mode: str, kind: str, key) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch values for one recorded site, aligned to the patched run: ``(values, mask)``."""
    p = setup.pairs
    if mode == "denoise":
        vals = setup.clean.records[kind][key]
        return align(vals, p.clean_lengths, p.corrupted_lengths, p.corrupted.shape[1])
    clean = setup.clean.records[kind][key]
    vmask = valid_mask(p.clean_lengths, p.clean.shape[1])
    if mode == "resample":
        return align(setup.corr.records[kind][key], p.corrupted_lengths, p.clean_lengths, p.clean.shape[1])
    if mode == "mean":
        w = vmask[..., None].to(clean.dtype)
        mean = (clean * w).sum(0) / w.sum(0).clamp(min=1)
        return mean.expand_as(clean), vmask
    return torch.zeros_like(clean), vmask


def _normalise(setup: _Setup, m: float, mode: str) -> float:
    ref = setup.m_corr if mode == "denoise" else setup.m_clean
    return (m - ref) / setup.gap()


def _batched(subject, pairs: PromptPairs, batch_size: int, metric: str, fn, senders=False):
    """Run ``fn(setup) -> list of (key dict, metric value)`` per batch; average metric values by example count."""
    rows: dict[tuple, list] = {}
    totals = {"clean": 0.0, "corr": 0.0}
    n = 0
    for chunk in pairs.chunks(batch_size):
        setup = _Setup(subject, chunk, metric, senders=senders)
        k = len(chunk)
        totals["clean"] += setup.m_clean * k
        totals["corr"] += setup.m_corr * k
        for key, value in fn(setup):
            rows.setdefault(key, [0.0])[0] += value * k
        n += k
    return {key: v[0] / n for key, v in rows.items()}, totals["clean"] / n, totals["corr"] / n


def _frame(results: dict, cols: Sequence[str], m_clean: float, m_corr: float, mode: str, metric: str) -> pd.DataFrame:
    ref = m_corr if mode == "denoise" else m_clean
    gap = m_clean - m_corr
    recs = [dict(zip(cols, key), metric=val, score=(val - ref) / gap if abs(gap) > 1e-12 else float("nan"))
            for key, val in results.items()]
    df = pd.DataFrame.from_records(recs, columns=[*cols, "metric", "score"])
    df.attrs.update(metric_name=metric, mode=mode, clean=m_clean, corrupted=m_corr)
    return df


def patch_residual(subject, pairs: PromptPairs, *, metric: str = "logit_diff", mode: str = "denoise",
                   layers: Sequence[int] | None = None, positions: Sequence[int] | str = "all",
                   batch_size: int = 32) -> pd.DataFrame:
    """Patch the residual stream before block ``layer`` (``n_layers`` = before the final norm) at one position.

    Returns one row per (layer, pos): columns ``layer, pos, metric, score``. ``pos`` is the
    absolute position when every prompt has the same length, else the offset from the last
    token (-1 = last). positions: ``"all"``, ``"last"`` or offsets from the end.
    """
    _check_mode(mode)
    layers = list(range(subject.n_layers + 1)) if layers is None else list(layers)
    for layer in layers:
        if not 0 <= layer <= subject.n_layers:
            raise ValueError(f"layer {layer} out of range 0..{subject.n_layers}")
    lens_all = torch.cat([pairs.clean_lengths, pairs.corrupted_lengths])
    uniform = bool((lens_all == lens_all[0]).all())
    min_len = int(lens_all.min())
    offsets = (list(range(-min_len, 0)) if positions == "all" else [-1] if positions == "last"
               else list(positions))

    def fn(setup):
        tokens, lengths = _base(setup, mode)
        for layer in layers:
            vals, vmask = _source(setup, mode, "resid", layer)
            for off in offsets:
                pm = position_mask(lengths, tokens.shape[1], [off]) & vmask
                logits, _ = run(subject, tokens, lengths, RunSpec(resid={layer: Patch(vals, pm)}))
                pos = int(lens_all[0]) + off if uniform else off
                yield (layer, pos), setup.score(last_logits(logits, lengths))

    res, mc, mr = _batched(subject, pairs, batch_size, metric, lambda s: list(fn(s)))
    return _frame(res, ("layer", "pos"), mc, mr, mode, metric)


def patch_components(subject, pairs: PromptPairs, *, component: str = "attn", metric: str = "logit_diff",
                     mode: str = "denoise", positions: Sequence[int] | str = "all", batch_size: int = 32
                     ) -> pd.DataFrame:
    """Patch each layer's attention output (``component="attn"``) or MLP output (``"mlp"``).

    Returns one row per layer: ``layer, component, metric, score``.
    """
    _check_mode(mode)
    if component not in ("attn", "mlp"):
        raise ValueError(f"component must be 'attn' or 'mlp', got {component!r}")
    if component == "mlp" and subject.arch.mlp is None:
        raise ValueError(f"{subject.name} has no MLPs")

    layers = subject.attn_layers if component == "attn" else range(subject.n_layers)

    def fn(setup):
        tokens, lengths = _base(setup, mode)
        for layer in layers:
            vals, vmask = _source(setup, mode, component, layer)
            pm = position_mask(lengths, tokens.shape[1], positions) & vmask
            logits, _ = run(subject, tokens, lengths, RunSpec(**{component: {layer: Patch(vals, pm)}}))
            yield (layer, component), setup.score(last_logits(logits, lengths))

    res, mc, mr = _batched(subject, pairs, batch_size, metric, lambda s: list(fn(s)))
    return _frame(res, ("layer", "component"), mc, mr, mode, metric)


def patch_heads(subject, pairs: PromptPairs, *, metric: str = "logit_diff", mode: str = "denoise",
                positions: Sequence[int] | str = "all", heads: Sequence[tuple[int, int]] | None = None,
                batch_size: int = 32) -> pd.DataFrame:
    """Patch each head's output: its ``d_head`` slice of the o_proj input (exact under GQA).

    Returns one row per head: ``layer, head, metric, score``.
    """
    _check_mode(mode)
    heads = [(l, h) for l in subject.attn_layers for h in range(subject.n_heads)] if heads is None else list(heads)
    subject.check_heads(heads)
    dh = subject.d_v

    def fn(setup):
        tokens, lengths = _base(setup, mode)
        for layer, head in heads:
            vals, vmask = _source(setup, mode, "z", layer)
            pm = position_mask(lengths, tokens.shape[1], positions) & vmask
            v = vals[..., head * dh:(head + 1) * dh]
            logits, _ = run(subject, tokens, lengths, RunSpec(heads={(layer, head): Patch(v, pm)}))
            yield (layer, head), setup.score(last_logits(logits, lengths))

    res, mc, mr = _batched(subject, pairs, batch_size, metric, lambda s: list(fn(s)))
    return _frame(res, ("layer", "head"), mc, mr, mode, metric)


@torch.no_grad()
def run_with_head_outputs(subject, tokens: torch.Tensor, values: dict, *, lengths: torch.Tensor | None = None,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` with heads' outputs replaced.

    values: (layer, head) -> ``[batch, pos, d_head]``, the new slice of that layer's o_proj input.
    positions: ``[batch, pos]`` bool where to replace (default: everywhere).
    """
    subject.check_heads(list(values))
    b, t = tokens.shape
    lengths = torch.full((b,), t, dtype=torch.long) if lengths is None else lengths
    mask = torch.ones(b, t, dtype=torch.bool) if positions is None else positions
    for (l, h), v in values.items():
        if tuple(v.shape) != (b, t, subject.d_v):
            raise ValueError(f"head ({l}, {h}): values must be [batch, pos, d_v] = {(b, t, subject.d_v)}, "
                             f"got {tuple(v.shape)}")
    spec = RunSpec(heads={k: Patch(v, mask) for k, v in values.items()})
    return run(subject, tokens, lengths, spec)[0]


# --- edges ----------------------------------------------------------------------------------
def reference_outputs(subject, setup: _Setup, ablation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sender's output in the ablated reference, aligned to the clean run.

    Returns ``([n_senders, batch, pos, d_model], mask [batch, pos])``.
    """
    p = setup.pairs
    width = p.clean.shape[1]
    clean = torch.stack(setup.clean.senders)
    vmask = valid_mask(p.clean_lengths, width)
    if ablation == "resample":
        corr = torch.stack(setup.corr.senders)  # [s, b, tc, d]
        aligned, mask = align(corr.permute(1, 2, 0, 3), p.corrupted_lengths, p.clean_lengths, width)
        return aligned.permute(2, 0, 1, 3).contiguous(), mask
    if ablation == "mean":
        w = vmask[None, ..., None].to(clean.dtype)
        mean = (clean * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)
        return mean.expand_as(clean).contiguous(), vmask
    if ablation == "zero":
        return torch.zeros_like(clean), vmask
    raise ValueError(f"unknown ablation {ablation!r}; known: resample, mean, zero")


def removed_matrix(graph: Graph, edges) -> torch.Tensor:
    """Bool ``[n_receivers, n_senders]`` with the given (sender, receiver) edges set."""
    m = torch.zeros(len(graph.receivers), len(graph.senders), dtype=torch.bool)
    for s, r in edges:
        graph.check_edge(s, r)
        m[graph.receiver_index[r], graph.sender_index[s]] = True
    return m


def valid_edges(graph: Graph) -> torch.Tensor:
    return removed_matrix(graph, graph.edges)


def run_removed(subject, setup: _Setup, removed: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor,
                graph: Graph) -> float:
    """Mean metric of the clean run with the ``removed`` edges carrying the reference values."""
    p = setup.pairs
    spec = RunSpec(edge_ref=ref, removed=removed, edge_mask=mask)
    logits, _ = run(subject, p.clean, p.clean_lengths, spec, graph=graph)
    return setup.score(last_logits(logits, p.clean_lengths))


def path_patch(subject, pairs: PromptPairs, sender: str, receivers: Sequence[str], *, metric: str = "logit_diff",
               ablation: str = "resample", batch_size: int = 32) -> dict:
    """Patch only the direct path ``sender -> receiver`` for each receiver (heads, MLPs or ``"logits"``).

    The clean run with the sender's contribution to the receivers' inputs replaced by its
    reference value (corrupted, mean or zero), everything else clean. Returns
    ``{"metric", "clean", "corrupted", "score"}``; score = (metric - clean) / (clean - corrupted).
    """
    graph = Graph.of(subject)
    removed = removed_matrix(graph, [(sender, r) for r in receivers])

    def fn(setup):
        ref, mask = reference_outputs(subject, setup, ablation)
        yield ("path",), run_removed(subject, setup, removed, ref, mask, graph)

    res, mc, mr = _batched(subject, pairs, batch_size, metric, lambda s: list(fn(s)), senders=True)
    m = res[("path",)]
    return {"metric": m, "clean": mc, "corrupted": mr, "score": (m - mc) / (mc - mr) if mc != mr else float("nan")}


def edge_patching_scores(subject, pairs: PromptPairs, *, metric: str = "logit_diff", ablation: str = "resample",
                         edges: Sequence[tuple[str, str]] | None = None, batch_size: int = 32) -> pd.DataFrame:
    """Activation patching of each edge alone: ``metric(clean with edge ablated) - metric(clean)``.

    One forward pass per edge. Returns ``sender, receiver, score`` (raw metric units) and
    ``normalized`` (score / (clean - corrupted)).
    """
    graph = Graph.of(subject)
    edges = list(graph.edges) if edges is None else list(edges)

    def fn(setup):
        ref, mask = reference_outputs(subject, setup, ablation)
        for s, r in edges:
            yield (s, r), run_removed(subject, setup, removed_matrix(graph, [(s, r)]), ref, mask, graph) - setup.m_clean

    res, mc, mr = _batched(subject, pairs, batch_size, metric, lambda s: list(fn(s)), senders=True)
    df = pd.DataFrame([(s, r, v) for (s, r), v in res.items()], columns=["sender", "receiver", "score"])
    df["normalized"] = df["score"] / (mc - mr)
    df.attrs.update(metric_name=metric, ablation=ablation, clean=mc, corrupted=mr)
    return df

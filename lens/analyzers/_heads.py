"""Head types: previous-token, duplicate-token and induction scores (METHODS sec 10).

Each pattern P is 0/1 over (query i, key j): previous-token P[i, i-1]; duplicate-token
P[i, j] = 1 for j < i with tok_j = tok_i; induction P[i, j] = 1 for 1 <= j <= i with
tok_{j-1} = tok_i. The "mul" score of one input is sum(A * P) / sum(A) over every real
query and key; the table gives the mean over inputs. The capture already holds the
pattern masses per query (``prev_token``, ``dup_token``, ``induction``), so the score is
sum_i mass_i / sum_i 1 with no full pattern.

Exclusions (both applied to A and P before the score, as in TransformerLens' detector):
``exclude_bos`` removes key 0 (the first position, BOS where the tokenizer adds one) and
``exclude_diag`` removes key i from row i. Their mass comes from ``sink_mass`` and
``diag_mass``; where a pattern cell is itself excluded (previous-token at i = 1 is key 0;
duplicate-token when tok_i = tok_0; induction when tok_{i-1} = tok_i puts key i in P) its
mass is taken back out of the numerator too, so the score stays sum(A*P)/sum(A) exactly.
The retrieval score (needle in a haystack) drives generation and lives in
``lens.experiments._model_checks.retrieval_scores``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lens.record import Capture
from lens.analyzers._common import head_frame, need, real, seq_len_param, top_heads
from lens.analyzers._findings import Findings

__all__ = ["head_types", "induction_test"]

SCORES = ("prev_token", "dup_token", "induction")


def _mul_scores(capture: Capture, exclude_bos: bool, exclude_diag: bool) -> dict[str, torch.Tensor]:
    s = capture.stats
    tok = capture.tokens
    n = tok.shape[1]
    pos = torch.arange(n)
    valid = real(capture).double()[:, None, None, :]  # [b, 1, 1, pos]
    first = (pos == 0).double().expand(tok.shape)
    is_one = (pos == 1).double().expand(tok.shape)
    same_prev = torch.zeros_like(tok, dtype=torch.double)
    same_prev[:, 1:] = (tok[:, 1:] == tok[:, :-1]).double()
    same_first = (tok == tok[:, :1]).double()
    same_first[:, 0] = 0.0
    exp = lambda m: m[:, None, None, :]  # noqa: E731  [b, pos] -> [b, 1, 1, pos]

    remaining = torch.ones_like(s["prev_token"], dtype=torch.double)
    num = {name: s[name].double().clone() for name in SCORES}
    if exclude_bos:
        sink = s["sink_mass"].double()
        remaining = remaining - sink
        num["prev_token"] -= sink * exp(is_one)  # A[1, 0] is both previous token and key 0
        num["dup_token"] -= sink * exp(same_first)  # key 0 holds the query's own token
    if exclude_diag:
        diag = s["diag_mass"].double()
        remaining = remaining - diag
        num["induction"] -= diag * exp(same_prev)  # tok_{i-1} = tok_i puts key i in the pattern
    if exclude_bos and exclude_diag:
        remaining = remaining + s["diag_mass"].double() * exp(first)  # row 0: key 0 is the diagonal, removed once
    den = (remaining.clamp(min=0) * valid).sum(-1)  # [b, L, H]
    out = {}
    for name, v in num.items():
        per_input = torch.where(den > 1e-12, (v * valid).sum(-1) / den.clamp(min=1e-12),
                                torch.full_like(den, float("nan")))
        ok = ~torch.isnan(per_input)
        out[name] = torch.where(ok, per_input, torch.zeros(())).sum(0)
        out[f"{name}_n"] = ok.sum(0)
    return out


def head_types_partial(capture: Capture, *, exclude_bos: bool = False, exclude_diag: bool = False) -> dict:
    """Per head: the sum of each per-input score over the inputs where it is defined, and their count."""
    need(capture, *SCORES, *(["sink_mass"] if exclude_bos else []), *(["diag_mass"] if exclude_diag else []),
         analyzer="head_types")
    return _mul_scores(capture, exclude_bos, exclude_diag)


def head_types(capture: Capture, *, exclude_bos: bool = False, exclude_diag: bool = False) -> Findings:
    """Previous-token, duplicate-token and induction "mul" scores per head (module docstring).

    Columns ``prev_token``, ``dup_token``, ``induction`` in [0, 1], mean over inputs.
    """
    part = head_types_partial(capture, exclude_bos=exclude_bos, exclude_diag=exclude_diag)
    return head_types_finish(part, exclude_bos=exclude_bos, exclude_diag=exclude_diag, T=seq_len_param(capture),
                             layers=capture.blocks, n_heads=capture.n_heads)


def head_types_finish(part: dict, *, exclude_bos: bool, exclude_diag: bool, T, layers: Sequence[int],
                      n_heads: int) -> Findings:
    """The ``head_types`` Findings from (summed) ``head_types_partial`` results (mean over inputs)."""
    names = list(SCORES)
    scores = {}
    for name in names:
        n = part[f"{name}_n"].double()
        scores[name] = torch.where(n > 0, part[name] / n.clamp(min=1), torch.full_like(n, float("nan")))
    frame = head_frame(layers, n_heads, **scores)
    params = {"exclude_bos": exclude_bos, "exclude_diag": exclude_diag, "T": T,
              "score": "mul: sum(A*P)/sum(A) per input, mean over inputs"}
    summary = {}
    lines = []
    for name in names:
        v = scores[name]
        i = int(torch.nan_to_num(v, nan=-1.0).reshape(-1).argmax())
        summary[f"top_{name}"] = [list(layers)[i // n_heads], i % n_heads]
        summary[f"top_{name}_score"] = float(v.reshape(-1)[i])
        lines.append(f"{name.replace('_token', '')} {top_heads(v, n=2, layers=layers)}")
    return Findings("head_types", frame, params, level="head", summary=summary, text="; ".join(lines))


def _repeat_layout(tokens: list[int]) -> tuple[int, int] | None:
    """(offset, period) when ``tokens`` is [BOS] + r + r (offset 1) or r + r (offset 0), else None."""
    n = len(tokens)
    for offset in (1, 0):
        if (n - offset) % 2 == 0 and n - offset >= 2:
            p = (n - offset) // 2
            if tokens[offset:offset + p] == tokens[offset + p:]:
                return offset, p
    return None


def induction_test(capture: Capture) -> Findings:
    """The induction test on BOS + r + r inputs: mean over the second copy of A[i, i - len(r) + 1].

    Query i in the second copy should attend the token after its earlier occurrence. Read from
    the full patterns when the capture kept them for the head and rows, else from the
    ``induction`` statistic, which equals A[i, i - len(r) + 1] when r's tokens are distinct
    and differ from the first token (``params["exact"]`` says whether that held).
    """
    layouts = []
    for b in range(capture.n_inputs):
        toks = capture.tokens[b, : int(capture.lengths[b])].tolist()
        lay = _repeat_layout(toks)
        if lay is None:
            raise ValueError(f"input {b} is not BOS + r + r (or r + r): the induction test needs repeated inputs")
        layouts.append(lay)
    exact = True
    q_idx, k_idx, b_idx = [], [], []
    for b, (offset, p) in enumerate(layouts):
        toks = capture.tokens[b, : int(capture.lengths[b])].tolist()
        r = toks[offset:offset + p]
        if len(set(r)) != len(r) or (offset == 1 and toks[0] in r):
            exact = False
        for i in range(offset + p, offset + 2 * p):
            q_idx.append(i)
            k_idx.append(i - p + 1)
            b_idx.append(b)
    q, k, bi = torch.tensor(q_idx), torch.tensor(k_idx), torch.tensor(b_idx)
    scores = torch.full((capture.n_layers, capture.n_heads), float("nan"), dtype=torch.double)
    source = torch.zeros(capture.n_layers, capture.n_heads, dtype=torch.bool)
    window = capture.meta.get("pattern_window") or (0, capture.tokens.shape[1])
    for layer, block in enumerate(capture.blocks):
        for head in range(capture.n_heads):
            pat = capture.patterns.get((block, head))
            if pat is not None and window[0] <= int(q.min()) and int(q.max()) < window[1]:
                vals = pat[bi, q - window[0], k].double()
                source[layer, head] = True
            else:
                need(capture, "induction", analyzer="induction_test")
                vals = capture.stats["induction"][bi, layer, head, q].double()
            # mean over queries per input, then over inputs
            per_input = torch.zeros(capture.n_inputs, dtype=torch.double).index_add_(0, bi, vals)
            counts = torch.zeros(capture.n_inputs, dtype=torch.double).index_add_(0, bi, torch.ones_like(vals))
            scores[layer, head] = (per_input / counts).mean()
    frame = head_frame(capture.blocks, capture.n_heads, induction_test=scores)
    frame["from_pattern"] = source.reshape(-1).numpy()
    periods = sorted({p for _, p in layouts})
    params = {"periods": periods, "exact": exact or bool(source.all()), "T": seq_len_param(capture)}
    i = int(torch.nan_to_num(scores, nan=-1.0).reshape(-1).argmax())
    summary = {"top_head": [i // capture.n_heads, i % capture.n_heads], "top_score": float(scores.reshape(-1)[i]),
               "per_layer_max": scores.amax(1).tolist()}
    text = f"induction test (period {periods}): {top_heads(scores, n=3, layers=capture.blocks)}"
    return Findings("induction_test", frame, params, level="head", summary=summary, text=text)

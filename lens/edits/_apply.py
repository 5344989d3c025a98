"""Edits built from data: mean ablation from reference texts, ACT and VAR sink sets from a Capture.

``mean_ablation`` runs the model once over the reference inputs (``head_outputs``) and
turns each head's mean output into an ``AblateHead``; ``act_from_capture`` and ``var_sinks``
read a first capture's statistics. ``nnsight_logits`` applies residual edits as nnsight
interventions, the second route that tests hold against ``Subject.edited``'s hooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lens.edits._data import AblateHead, CalibrateSinks, ResidualEdit
from lens.edits._reads import head_outputs, nn_block
from lens.model import model_lock

__all__ = ["act_from_capture", "head_means", "mean_ablation", "nnsight_logits", "var_sinks"]


def head_means(subject, reference, heads: Sequence[tuple[int, int]] | None = None) -> dict[tuple[int, int], torch.Tensor]:
    """Mean output ([d_head]) of each head over every real token of ``reference`` (texts or a Capture)."""
    heads = [(l, h) for l in range(subject.n_layers) for h in range(subject.n_heads)] if heads is None else list(heads)
    subject.check_heads(heads)
    outs, mask = head_outputs(subject, reference, sorted({l for l, _ in heads}))
    m = mask.to(torch.float32)[..., None, None]
    return {(l, h): ((outs[l].cpu() * m).sum((0, 1)) / m.sum())[h] for l, h in heads}


def mean_ablation(subject, heads: Sequence[tuple[int, int]], reference) -> list[AblateHead]:
    """``AblateHead`` edits that replace each head's output by its mean over ``reference``."""
    means = head_means(subject, reference, heads)
    return [AblateHead(layer=l, head=h, mean=tuple(means[(l, h)].tolist())) for l, h in heads]


# --- edits built from a Capture ------------------------------------------------------------------
def act_from_capture(capture, heads: Sequence[tuple[int, int]], *, beta: float = 0.4, theta: float = 0.1,
                     alpha: float | None = None, renormalise: bool = False) -> list[CalibrateSinks]:
    """ACT edits with the hidden sinks of each input read off a first capture (METHODS sec 6).

    c_j = received_j / visible_j (the column sum over the T - j queries that see key j,
    ``Capture.alpha()``); S = {j < T : c_j > theta} (or alpha / T) minus its first element.
    The edits hold one sink set per captured input, so they apply to exactly those inputs
    in the same order (``subject.edited``); they need ``received`` and ``visible``.
    """
    for name in ("received", "visible"):
        if name not in capture.stats:
            raise ValueError(f"act_from_capture needs the {name!r} statistic in the capture")
    n_heads = capture.n_heads
    for l, h in heads:
        if l not in capture.blocks or not 0 <= h < n_heads:
            raise ValueError(f"head ({l}, {h}) does not exist in the capture (blocks with attention "
                             f"{list(capture.blocks)} x {n_heads} heads)")
    score = capture.alpha()  # [batch, layer, head, key_pos]
    lengths = capture.lengths.tolist()
    edits = []
    for l, h in heads:
        per_input = []
        for b, n in enumerate(lengths):
            thr = theta if alpha is None else alpha / n
            keys = [j for j in range(n) if score[b, capture.layer_index(l), h, j].item() > thr]
            per_input.append(tuple(keys[1:]))
        edits.append(CalibrateSinks(layer=l, head=h, beta=beta, theta=theta, alpha=alpha,
                                    sinks=tuple(per_input), renormalise=renormalise))
    return edits


def var_sinks(capture, layer: int, *, dims: Sequence[int] | None = None, tau: float = 20.0) -> tuple[tuple[int, ...], ...]:
    """VAR sink tokens at ``layer`` per input (METHODS sec 7): max over ``dims`` of |RMSnorm(x)| > tau.

    x is the residual input of ``layer`` (= ``capture.resid[layer - 1]``: capture with
    ``resid_layers=[layer - 1]``); the norm has no learned weight. dims default to the
    hidden dimensions of the largest activations the capture saw at ``layer - 1``
    (METHODS sec 10 massive activations).
    """
    if layer < 1 or (layer - 1) not in capture.resid:
        raise ValueError(f"var_sinks needs the residual input of layer {layer}: capture with resid_layers=[{layer - 1}]")
    x = capture.resid[layer - 1].float()  # [batch, pos, d_model]
    if dims is None:
        dims = sorted({int(d) for d in capture.stats["massive_dim"][:, layer - 1].reshape(-1).tolist()})
    x_hat = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    score = x_hat[..., list(dims)].abs().amax(-1)  # [batch, pos]
    out = []
    for b, n in enumerate(capture.lengths.tolist()):
        out.append(tuple(int(j) for j in torch.nonzero(score[b, :n] > tau).reshape(-1)))
    return tuple(out)


@torch.no_grad()
def nnsight_logits(subject, prompt: str, edits: Sequence[ResidualEdit]) -> torch.Tensor:
    """Last-token logits ``[vocab]`` of ``prompt`` with residual edits applied inside an nnsight trace.

    The same edits as the forward hooks of ``Subject.edited``, expressed as nnsight
    interventions (``block.output[:, positions] ...``); tests hold the two routes together.
    nnsight registers hooks of its own, which act for every forward of the model while the
    trace runs (the one documented exception to ``Subject.hooks``): the model's lock keeps
    the workbench's other passes out meanwhile.
    """
    ids = subject.to_tokens(prompt).to(subject.device)
    n = ids.shape[1]
    for e in edits:
        if not isinstance(e, ResidualEdit):
            raise TypeError(f"nnsight_logits applies residual edits only, got {type(e).__name__}")
        e.targets(subject.n_layers, subject.n_heads)
    with model_lock(subject.model), subject.nnsight.trace(ids):  # nnsight hooks the same modules
        for e in edits:
            out = nn_block(subject, e.layer).output
            hidden = out[0] if isinstance(out, tuple) else out
            idx = e.position_index(n).tolist()
            if hasattr(e, "vector"):
                hidden[:, idx] += e.scale * e.vector.to(subject.device)
            else:
                vals = e.values.to(subject.device)
                hidden[:, idx] = vals if vals.ndim == 3 else vals[None].expand(ids.shape[0], *vals.shape)
        logits = subject.nnsight.output.logits.save()
    return torch.as_tensor(logits)[0, -1].detach().float().cpu()



"""Ground-truth measurements on the organisms (METHODS sec 2 and 10), in plain torch.

These helpers call the model, so they live beside the organisms and not among the
analyzers. Attention patterns are recomputed from each attention module's input and the
GPT-2 weights, so the numbers do not depend on which attention implementation the model
runs with (eager, sdpa, or the workbench's own); a test checks them against eager
``output_attentions``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lens.model._organisms_data import trigger_mask
from lens.model._sites import module_hooks


@torch.no_grad()
def attention_patterns(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patterns ``[batch, layer, head, query_pos, key_pos]`` and values ``[batch, layer, head, pos, d_head]``.

    GPT-2 only (``transformer.h[l].attn`` with a fused Conv1D ``c_attn``). Causal, no padding.
    """
    blocks = model.transformer.h
    inputs: list[torch.Tensor] = []

    def grab(_module, args, kwargs):
        inputs.append(args[0] if args else kwargs["hidden_states"])

    with module_hooks([(b.attn, "pre", grab) for b in blocks]):  # only this thread's forward is read
        model(input_ids=tokens.to(next(model.parameters()).device))
    patterns, values = [], []
    n = tokens.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=inputs[0].device).tril()
    for block, x in zip(blocks, inputs):
        attn = block.attn
        q, k, v = attn.c_attn(x).split(attn.split_size, dim=2)
        q, k, v = (t.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) * attn.scaling
        patterns.append(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1))
        values.append(v)
    return torch.stack(patterns, dim=1).float(), torch.stack(values, dim=1).float()


def value_drain_ratio(model, values: torch.Tensor) -> torch.Tensor:
    """``||W_O^h v_0|| / mean_{j>=1} ||W_O^h v_j||`` per (layer, head), mean over sequences (METHODS sec 2).

    ``values`` from :func:`attention_patterns`. GPT-2's ``c_proj`` is a Conv1D with weight
    ``[d_in, d_out]``: head h owns input rows ``h*d_head:(h+1)*d_head``. Returns ``[layer, head]``.
    """
    out = []
    for layer, block in enumerate(model.transformer.h):
        w = block.attn.c_proj.weight.detach().float()  # [d_model (heads x d_head), d_model]
        n_heads, d_head = values.shape[2], values.shape[4]
        w_heads = w.view(n_heads, d_head, -1)  # [head, d_head, d_model]
        written = torch.einsum("bhpd,hdm->bhpm", values[:, layer], w_heads).norm(dim=-1)  # [batch, head, pos]
        out.append((written[:, :, 0] / written[:, :, 1:].mean(dim=-1)).mean(dim=0))
    return torch.stack(out)


@torch.no_grad()
def copy_accuracy(model, tokens: torch.Tensor, triggers) -> float:
    """Bigram-Backcopy: fraction of trigger positions whose argmax prediction is the back-copied token."""
    logits = model(input_ids=tokens).logits[:, :-1]
    mask = trigger_mask(tokens[:, :-1], triggers)
    mask[:, 0] = False
    return float((logits.argmax(-1) == tokens[:, 1:])[mask].float().mean())


def sink_attention(patterns: torch.Tensor, tokens: torch.Tensor, triggers, *, layer: int = 0, head: int = 0) -> dict:
    """Bigram-Backcopy attention of one head, split by query kind (METHODS sec 2).

    ``to_bos_non_trigger``: mean attention to position 0 from queries i >= 1 holding a
    non-trigger token (the dormant, sink behaviour). ``to_bos_trigger`` and
    ``to_prev_trigger``: from trigger queries, to BOS and to the previous token (active).
    """
    a = patterns[:, layer, head]  # [batch, query_pos, key_pos]
    trig = trigger_mask(tokens, triggers)
    trig[:, 0] = False
    non = ~trig
    non[:, 0] = False
    to_bos = a[:, :, 0]
    to_prev = torch.zeros_like(to_bos)
    to_prev[:, 1:] = a.diagonal(offset=-1, dim1=1, dim2=2)  # A[i, i-1] for i >= 1
    return {
        "to_bos_non_trigger": float(to_bos[non].mean()),
        "to_bos_trigger": float(to_bos[trig].mean()),
        "to_prev_trigger": float(to_prev[trig].mean()),
    }


def previous_token_scores(patterns: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """Mean ``A[i, i-1]`` over queries i >= 1 and the batch, per head of ``layer`` (METHODS sec 10)."""
    a = patterns[:, layer]  # [batch, head, q, k]
    return a.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))


def induction_scores(patterns: torch.Tensor, period: int, layer: int = 1) -> torch.Tensor:
    """METHODS sec 10 induction test on ``BOS + r + r``: mean ``A[i, i-period+1]`` over the second copy, per head.

    The second copy occupies positions ``period+1 .. 2*period``.
    """
    a = patterns[:, layer]  # [batch, head, q, k]
    q = torch.arange(period + 1, 2 * period + 1)
    return a[:, :, q, q - period + 1].mean(dim=(0, -1))


@torch.no_grad()
def masked_loss(model, tokens: torch.Tensor, target_mask: torch.Tensor | None = None) -> float:
    """Mean next-token cross-entropy (nats) over target positions where ``target_mask`` is True."""
    logits = model(input_ids=tokens).logits[:, :-1]
    losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    if target_mask is None:
        return float(losses.mean())
    return float(losses[target_mask[:, 1:]].mean())


@torch.no_grad()
def masked_accuracy(model, tokens: torch.Tensor, target_mask: torch.Tensor) -> float:
    """Argmax next-token accuracy over target positions where ``target_mask`` is True."""
    pred = model(input_ids=tokens).logits[:, :-1].argmax(-1)
    return float((pred == tokens[:, 1:])[target_mask[:, 1:]].float().mean())


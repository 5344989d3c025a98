"""Reading from a running model what edits are built from: head outputs and residual streams.

``head_outputs`` takes each head's output before the output projection (what
``AblateHead``'s mean replaces, the ``attn_z`` sites); ``residual_from_prompt`` takes a
block's output (what ``PatchResidual.from_prompt`` patches in, the ``resid_post`` site).
Both read through ``Subject.hooks``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from lens.model import normalise_inputs

__all__ = ["head_outputs", "nn_block", "residual_from_prompt"]


# --- head outputs and mean ablation --------------------------------------------------------------
def _rows(subject, inputs) -> list[list[int]]:
    """Token rows of ``inputs``: texts or ids (``normalise_inputs``), or a Capture's own inputs.

    A Capture is recognised by its ``tokens`` and ``lengths`` (this layer sits below
    ``lens.record``, which defines it)."""
    if hasattr(inputs, "tokens") and hasattr(inputs, "lengths"):
        return [inputs.tokens[b, : int(n)].tolist() for b, n in enumerate(inputs.lengths)]
    return normalise_inputs(subject, inputs)


@torch.no_grad()
def head_outputs(subject, inputs, layers: Sequence[int] | None = None, *, batch_size: int = 8
                 ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Each head's output before the output projection: ``{layer: [batch, pos, head, d_v]}``, mask.

    This is what ``HeadEdits.head_gate`` multiplies and ``head_add`` adds to. ``inputs``:
    texts, token ids, or a Capture (its inputs are run again). Runs with whatever edits
    are active; the mask ``[batch, pos]`` marks real tokens.
    """
    rows = _rows(subject, inputs)
    layers = list(range(subject.n_layers)) if layers is None else list(layers)
    subject.check_heads([(l, 0) for l in layers])
    store: dict[int, list] = {l: [] for l in layers}
    width = max(len(r) for r in rows)

    def grab(layer):
        def read(z, call):
            z = z.detach().float()
            store[layer].append(z.reshape(*z.shape[:2], subject.n_heads, subject.d_v))
        return read

    masks = []
    with subject.hooks({("attn_z", l): grab(l) for l in layers}):
        for i in range(0, len(rows), batch_size):
            ids, mask = _pad(subject, rows[i:i + batch_size], width)
            subject.model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
            masks.append(mask)
    return {l: torch.cat(v) for l, v in store.items()}, torch.cat(masks).cpu()


def _pad(subject, rows, width):
    pad = subject.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=subject.device)
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows], device=subject.device)
    return ids, mask



# --- residual streams ------------------------------------------------------------------------------
def nn_block(subject, layer: int):
    """Block ``layer`` of the nnsight view (``subject.nnsight``), for edits written as nnsight code."""
    return operator.attrgetter(subject.arch.layers)(subject.nnsight)[layer]


@torch.no_grad()
def residual_from_prompt(subject, prompt: str, layer: int) -> torch.Tensor:
    """The residual stream after block ``layer`` for ``prompt``, ``[pos, d_model]`` (the ``resid_post`` site)."""
    subject.check_heads([(layer, 0)])
    ids = subject.to_tokens(prompt)
    saved = []
    with subject.hooks({("resid_post", layer): lambda x, call: saved.append(x.detach())}):
        subject.model(input_ids=ids.to(subject.device), use_cache=False)
    return saved[0][0].float().cpu().clone()

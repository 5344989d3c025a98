"""Reading from a running model what edits are built from: head outputs and residual streams.

``head_outputs`` takes each head's output before the output projection (what
``AblateHead``'s mean replaces); ``residual_from_prompt`` takes a block's output through
``subject.nnsight`` (what ``PatchResidual.from_prompt`` patches in). Both hold the model's
lock while they run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lens.model import normalise_inputs
from lens.model import _routing
from lens.model._structure import get_path

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
    handles = []

    def grab(layer):
        def pre(module, args):
            x = args[0].detach().float()
            store[layer].append(x.reshape(*x.shape[:2], subject.n_heads, subject.d_v))
        return pre

    with _routing.model_lock(subject.model):
        try:
            for l in layers:
                handles.append(subject.head_site(l).register_forward_pre_hook(grab(l)))
            masks = []
            for i in range(0, len(rows), batch_size):
                ids, mask = _pad(subject, rows[i:i + batch_size], width)
                subject.model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
                masks.append(mask)
        finally:
            for h in handles:
                h.remove()
    return {l: torch.cat(v) for l, v in store.items()}, torch.cat(masks).cpu()


def _pad(subject, rows, width):
    pad = subject.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=subject.device)
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows], device=subject.device)
    return ids, mask



# --- the nnsight route for residual edits --------------------------------------------------------
def nn_block(subject, layer: int):
    return get_path(subject.nnsight, subject.arch.layers)[layer]


@torch.no_grad()
def residual_from_prompt(subject, prompt: str, layer: int) -> torch.Tensor:
    """The residual stream after block ``layer`` for ``prompt``, ``[pos, d_model]``, via ``subject.nnsight``."""
    subject.check_heads([(layer, 0)])
    ids = subject.to_tokens(prompt)
    with _routing.model_lock(subject.model), subject.nnsight.trace(ids.to(subject.device)):
        out = nn_block(subject, layer).output
        saved = (out[0] if isinstance(out, tuple) else out).save()
    return torch.as_tensor(saved)[0].detach().float().cpu().clone()



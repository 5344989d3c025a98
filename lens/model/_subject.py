"""Subject: a loaded model, its tokenizer, and the facts analyzers need."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cached_property

import torch

from lens.model._arch import overrides_for, tl_architecture
from lens.model import _lazy, _sites
from lens.model._editing import edited
from lens.model._inputs import id_rows, n_vocab
from lens.model._routing import model_lock
from lens.model._structure import Structure, StructureError, discover


class Subject:
    """A transformers causal LM with its tokenizer and shape facts.

    ``subject.model`` is the stock Hugging Face model: the workbench never rewrites its
    module tree. ``subject.bridge`` (TransformerLens 4) and ``subject.nnsight`` (nnsight)
    are views over the *same parameter tensors*, created on first use.

    Threads: one Subject may be shared by many threads. Every workbench call on it
    (``lens.capture``, ``edited``, patching and circuit discovery, probes, ``logits``,
    the model checks) is thread-safe and gives exactly what it gives alone: calls that
    route the attention hold ``subject.lock`` (re-entrant, one per model), so they run one
    at a time per Subject, and hooks (``hooks``) act only for the forwards of the context
    that installed them. A raw ``subject.model(...)`` from another thread while a capture
    or an ``edited`` block runs passes through untouched: it sees neither their routing
    nor their hooks. Inside an ``edited`` block, do not wait for another thread that runs
    a workbench call on this Subject: it waits for the lock (a deadlock).
    """

    def __init__(self, model, tokenizer, *, name: str, source: str = "", info: dict | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.info = dict(info or {})
        cfg = model.config
        # Found from the module tree and one traced pass (lens.model._structure), not from a table;
        # a model whose structure or attention the workbench cannot handle fails here.
        self.arch: Structure = discover(self.model, overrides=overrides_for(cfg.model_type))
        self.n_layers: int = self.arch.n_layers  # decoder blocks; layer numbers are block numbers
        # The blocks with attention: all of them, except in hybrid models (Qwen3-Next, Jamba, ...).
        self.attn_layers: tuple[int, ...] = self.arch.attn_layers
        self._layer_of = {id(self.attn_module(i)): i for i in self.attn_layers}
        self.n_heads: int = self.arch.n_heads
        self.n_kv_heads: int = self.arch.n_kv_heads
        self.d_model: int = self.model.get_input_embeddings().weight.shape[-1]
        self.d_head: int = self.arch.d_head  # query and key head size
        self.d_v: int = self.arch.d_v  # value head size = a head's output, what head edits and patching act on
        n_ctx = next((getattr(cfg, k) for k in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
                      if isinstance(getattr(cfg, k, None), int)), None)
        if n_ctx is None:
            raise StructureError(f"{cfg.model_type}: the config names no context length "
                                 "(max_position_embeddings, n_positions, n_ctx or seq_length)")
        self.n_ctx: int = n_ctx
        self.prepends_bos: bool = _tokenizer_prepends_bos(tokenizer)

    def __repr__(self) -> str:
        return (
            f"Subject({self.name!r}: {self.n_layers} layers"
            f"{f' ({len(self.attn_layers)} with attention)' if self.arch.hybrid else ''} x {self.n_heads} heads "
            f"({self.n_kv_heads} kv), d_model={self.d_model}, d_head={self.d_head}{f', d_v={self.d_v}' if self.d_v != self.d_head else ''}, "
            f"n_ctx={self.n_ctx}, prepends_bos={self.prepends_bos})"
        )

    # --- tokens -------------------------------------------------------------------------
    def to_tokens(self, text: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``[batch, pos]`` (right-padded for a list of texts), as the model sees them."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise ValueError("to_tokens takes a string or a non-empty list of strings")
        for n, t in enumerate(texts):
            if not t.strip():
                raise ValueError(f"empty text (input {n}): nothing to analyze")
        enc = [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        width = max(len(e) for e in enc)
        pad = self.pad_token_id
        return torch.tensor([e + [pad] * (width - len(e)) for e in enc], dtype=torch.long)

    def to_str_tokens(self, text: str | torch.Tensor | Sequence[int]) -> list[str]:
        """The tokens of one text (or one row of ids, checked against the vocabulary) as strings."""
        if isinstance(text, str):
            ids = self.to_tokens(text)[0].tolist()
        else:
            rows = id_rows(text, name=self.name, vocab=n_vocab(self))
            if len(rows) != 1:
                raise ValueError(f"to_str_tokens takes one text or one row of ids; got {len(rows)} rows: "
                                 "call it once per row")
            ids = rows[0]
        return [self.tokenizer.decode([i]) for i in ids]

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0

    # --- structure ----------------------------------------------------------------------
    @property
    def blocks(self) -> torch.nn.ModuleList:
        return self.model.get_submodule(self.arch.layers)

    def attn_module(self, layer: int) -> torch.nn.Module:
        """The attention module of block ``layer``; a block without attention is refused by name."""
        if layer not in self._attn_set:
            self.check_heads([(layer, 0)])
        return self.blocks[layer].get_submodule(self.arch.attn)

    @cached_property
    def _attn_set(self) -> frozenset[int]:
        return frozenset(self.arch.attn_layers)

    def o_proj(self, layer: int) -> torch.nn.Module:
        """The output projection that reads layer ``layer``'s attention output (per-head slices)."""
        return self.attn_module(layer).get_submodule(self.arch.o_proj)

    def head_site(self, layer: int) -> torch.nn.Module:
        """The module whose input is layer ``layer``'s head outputs side by side, ``[..., n_heads * d_v]``:
        the output projection, or the norm in front of it (BitNet). Head reads and patches hook its input."""
        return self.attn_module(layer).get_submodule(self.arch.attn_out_norm or self.arch.o_proj)

    def layer_of(self, module: torch.nn.Module) -> int | None:
        """The layer whose attention module ``module`` is (None for any other module)."""
        return self._layer_of.get(id(module))

    def check_heads(self, heads: Sequence[tuple[int, int]]) -> None:
        """Raise a clear error for any (layer, head) that does not exist in this model (layer = block number)."""
        for layer, head in heads:
            if 0 <= layer < self.n_layers and 0 <= head < self.n_heads and layer not in self._attn_set:
                block = type(self.blocks[layer]).__name__
                raise ValueError(f"block {layer} of {self.name} has no attention (it is a {block}); the blocks with "
                                 f"attention are {list(self.attn_layers)}")
            if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
                raise ValueError(
                    f"head ({layer}, {head}) does not exist in {self.name}: "
                    f"layers 0..{self.n_layers - 1}, heads 0..{self.n_heads - 1}; pick (layer, head) in those ranges"
                )

    def hooks(self, fns, *, alone: bool = False):
        """Context manager: ``fn(x, call)`` at named sites for the block (``lens.model._sites``).

        ``fns`` maps sites such as ``"resid_pre.3"``, ``"attn_z.3"`` (heads side by side),
        ``"attn_out.3"``, ``"mlp_out.3"``, ``"resid_post.3"`` or ``"final_in"`` to hooks; a hook
        returning a tensor replaces the site's. Removed on exit; they act only for forwards
        run in this thread (or task) inside the block.
        """
        return _sites.hooks(self, fns, alone=alone)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def lock(self):
        """The model's re-entrant lock (``lens.model._routing.model_lock``), held by the workbench's passes
        that route the attention; hold it to run several of them as one step."""
        return model_lock(self.model)

    def edited(self, *edits, backend: str = "auto"):
        """Context manager: inside the block ``model`` runs with ``edits`` (``lens.edits``) applied.

        Attention is routed through ``lens.model._routing.routed`` with a session that applies the
        edits and records no statistics; row edits (ACT, VAR) and residual edits add hooks.
        Everything is removed on exit, also when the body raises; the block holds ``lock``
        until then, so other threads' calls on this Subject wait. Edits on heads or layers
        that do not exist fail here, before the model runs. Blocks nest (edits add up);
        ``lens.capture`` inside the block sees only the edits passed to it.
        """
        return edited(self, edits, backend=backend)

    # --- views --------------------------------------------------------------------------
    def _shared_clone(self):
        """A new module tree that shares every parameter and buffer tensor with ``model``."""
        memo = {id(t): t for t in self.model.parameters()}
        memo.update({id(t): t for t in self.model.buffers()})
        return copy.deepcopy(self.model, memo)

    @cached_property
    def bridge(self):
        """A TransformerLens 4 ``TransformerBridge`` over the same weights.

        The bridge rewrites the module tree it wraps, so it wraps a structural clone that
        shares the parameter tensors: no second copy of the weights, and ``model`` stays stock.
        """
        clone = self._shared_clone()
        # TransformerLens is imported here, on first use (seconds; see _lazy)
        return _lazy.build_bridge_from_module(
            clone,
            tl_architecture(self.arch.tl_architecture),
            hf_config=clone.config,
            tokenizer=self.tokenizer,
            model_name=self.name,
        )

    @cached_property
    def nnsight(self):
        """An nnsight ``TransformersModel`` (text generation) over the same model object."""
        # nnsight is imported here, on first use (see _lazy)
        return _lazy.TransformersModel(self.model, task="text-generation", tokenizer=self.tokenizer)

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final logits ``[batch, pos, vocab]`` of the plain model."""
        return self.model(input_ids=tokens.to(self.device), attention_mask=attention_mask).logits


def _tokenizer_prepends_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos

"""Applying edits to a running model: ``Subject.edited`` and ``compile_edits``.

Edits are frozen data defined in ``lens.edits``; this module applies them, and knows them
only through the small protocol they share (``applied_by``, ``targets``, ``key_bias``,
``gate``, ``rows``, ``apply``), so the model layer does not import the edits package.

``edited(subject, edits)`` routes the model's attention through ``lens.kernels.attention``
(``_routing.routed``) with a session that hands every layer its compiled ``HeadEdits``
and asks for no statistic, except on layers with a row edit (ACT, VAR): there it asks the
eager backend for the targeted heads' post-softmax pattern, rewrites the rows, and
recomputes those heads' outputs as p' @ v (then gate and add), in place, before the output
projection sees them. Residual edits are hooks at the ``resid_post`` sites (``_sites``).
Everything registered is removed when the block exits, also when it raises, and acts only
for forwards run in the context that entered the block. The block holds the model's lock
(``_routing.model_lock``) throughout: other threads' workbench calls on the same model
wait until it exits; their plain forwards pass through untouched.

Sessions nest: an inner ``edited`` block applies the outer edits plus its own.
``lens.capture`` activates a session of its own, so it sees only the edits passed to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch

from lens.kernels import HeadEdits, StatOptions
from lens.model import _routing, _sites

__all__ = ["EditSession", "applied_by", "compile_edits", "edited"]

APPLIERS = ("attention", "rows", "residual")


def applied_by(edit) -> str:
    """How ``edit`` is applied: "attention" (a HeadEdits), "rows" (ACT, VAR) or "residual" (a block hook)."""
    kind = getattr(type(edit), "applied_by", None)
    if kind not in APPLIERS:
        raise TypeError(f"not an edit: {edit!r} (use the classes in lens.edits)")
    return kind


def compile_edits(edits: Iterable, *, layers: int | Sequence[int], n_heads: int, d_v: int, n_keys: int,
                  hooks: bool = False) -> dict:
    """Turn edits into ``{layer: kernels.HeadEdits}``; biases add up, gates multiply.

    Row edits (ACT, VAR) and residual edits are not HeadEdits: with ``hooks=False`` (the
    ``lens.capture`` path) they fail clearly; ``Subject.edited`` passes ``hooks=True`` and
    applies them itself.
    """
    bias: dict[int, torch.Tensor] = {}
    gate: dict[int, torch.Tensor] = {}
    add: dict[int, torch.Tensor] = {}
    for edit in edits:
        if applied_by(edit) != "attention":
            if hooks:
                continue
            raise ValueError(
                f"{type(edit).__name__} is applied by hooks, not by the attention function: run it with "
                "`with subject.edited(...)` (or lens.experiments). lens.capture(..., edits=...) applies "
                "ScaleAttention, KeyBias, MoveToBOS, AblateHead and GateHead only.")
        targets, heads = edit.targets(layers, n_heads)
        kb = edit.key_bias(n_keys)
        gt = edit.gate()
        for layer in targets:
            if kb is not None:
                b = bias.setdefault(layer, torch.zeros(n_heads, n_keys))
                b[heads] = b[heads] + kb
            if gt is not None:
                g = gate.setdefault(layer, torch.ones(n_heads))
                a = add.setdefault(layer, torch.zeros(n_heads, d_v))
                factor, vec = gt
                if vec is not None and vec.shape != (d_v,):
                    raise ValueError(f"{type(edit).__name__} adds a vector of shape {tuple(vec.shape)} to a head "
                                     f"output of size d_v={d_v}")
                g[heads] = g[heads] * factor
                a[heads] = a[heads] * factor + (vec if vec is not None else 0.0)
    out = {}
    for layer in sorted(set(bias) | set(gate)):
        out[layer] = HeadEdits(
            key_bias=bias[layer].unsqueeze(0) if layer in bias else None,
            head_gate=gate.get(layer),
            head_add=add[layer] if layer in add and bool(add[layer].any()) else None,
        )
    return out


class EditSession:
    """What ``lens.model._routing`` asks of an active session, for edits only (no statistics)."""

    def __init__(self, subject, edits: Sequence, *, backend: str = "auto"):
        self.subject = subject
        self.edits = tuple(edits)
        self.backend = backend
        s = subject
        self.row_edits: dict[int, list[tuple[object, list[int]]]] = {}
        self.residual: list = []
        for e in self.edits:
            kind = applied_by(e)
            # fails clearly on heads that do not exist, and on blocks without attention
            layers, heads = e.targets(s.n_layers if kind == "residual" else s.attn_layers, s.n_heads)
            if kind == "rows":
                for layer in layers:
                    self.row_edits.setdefault(layer, []).append((e, heads))
            elif kind == "residual":
                self.residual.append(e)
        self._compiled: dict[int, dict] = {}
        self.head_edits(0, 1)  # compile once now so a malformed edit fails before the model runs
        self.padding: torch.Tensor | None = None  # [batch, key_pos] of the current forward
        self.n_new: int | None = None

    def head_edits(self, layer: int, n_keys: int):
        if n_keys not in self._compiled:
            s = self.subject
            self._compiled[n_keys] = compile_edits(self.edits, layers=s.attn_layers, n_heads=s.n_heads,
                                                   d_v=s.d_v, n_keys=n_keys, hooks=True)
        return self._compiled[n_keys].get(layer)

    def _query_mask(self, n_keys: int, n_queries: int | None) -> torch.Tensor | None:
        pad = self.padding
        if pad is None or pad.shape[-1] != n_keys:
            return None
        nq = n_queries if n_queries is not None else n_keys
        return pad[:, n_keys - nq:].bool()

    def attention_kwargs(self, layer, module, n_keys):
        kw: dict = {"edits": self.head_edits(layer, n_keys), "backend": self.backend}
        rows = self.row_edits.get(layer)
        if rows:
            heads = sorted({h for _, hs in rows for h in hs})
            kw.update(stats=("pattern",), options=StatOptions(pattern_heads=tuple(heads)), backend="eager")
            qm = self._query_mask(n_keys, self.n_new)
            if qm is not None:
                kw["query_mask"] = qm.to(self.subject.device)
        return kw

    def record(self, layer, module, value, result):
        rows = self.row_edits.get(layer)
        if not rows:
            return
        heads = sorted({h for _, hs in rows for h in hs})
        p = result.stats["pattern"]  # [b, H', q, k], padding rows 0
        b, _, nq, nk = p.shape
        valid = self._query_mask(nk, nq)
        valid = torch.ones(b, nq, dtype=torch.bool, device=p.device) if valid is None else valid.to(p.device)
        edited = p.clone()
        for edit, hs in rows:
            sel = [heads.index(h) for h in hs]
            edited[:, sel] = edit.rows(edited[:, sel], valid)
        group = self.subject.n_heads // value.shape[1]
        v = value.float()[:, [h // group for h in heads]]  # head h reads kv head h // group
        out = edited @ v
        he = self.head_edits(layer, nk)
        if he is not None and he.head_gate is not None:
            out = out * he.head_gate.to(out.device)[heads][None, :, None, None]
        if he is not None and he.head_add is not None:
            out = out + he.head_add.to(out.device)[heads][None, :, None, :]
        old = result.output[:, heads]
        result.output[:, heads] = torch.where(valid[:, None, :, None], out.to(old.dtype), old)


@contextlib.contextmanager
def edited(subject, edits: Sequence, *, backend: str = "auto") -> Iterator[EditSession]:
    """Within the block ``subject.model`` runs with ``edits``; all of it is undone on exit."""
    outer = _routing._active.get()
    inherited = outer.edits if isinstance(outer, EditSession) and outer.subject is subject else ()
    session = EditSession(subject, (*inherited, *edits), backend=backend)
    fns = {"model_in": _padding_recorder(session)}
    by_layer: dict[int, list] = {}
    for e in edits:  # the outer block's residual hooks still act: its scope is still entered
        if applied_by(e) == "residual":
            by_layer.setdefault(e.layer, []).append(e)
    fns.update({_sites.Site("resid_post", layer): _residual_hook(es) for layer, es in by_layer.items()})
    # The hooks act only for this context's forwards; routed holds the model's lock for the block.
    with _sites.hooks(subject, fns), _routing.routed(subject.model), _routing.active(session):
        yield session


def _padding_recorder(session: EditSession):
    def hook(x, call):
        session.n_new = int(x.shape[1]) if x is not None else None
        mask = call.kwargs.get("attention_mask")
        session.padding = mask.detach() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
    return hook


def _residual_hook(edits: list):
    def hook(x, call):
        for e in edits:  # in the order given
            x = e.apply(x)
        return x
    return hook

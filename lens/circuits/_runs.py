"""One forward pass of the stock Hugging Face model with patches: site hooks (``Subject.hooks``).

A ``RunSpec`` says what one pass patches and records; ``_Pass`` turns it into hooks at the
model's named sites (``lens.model._sites``), installed for the pass and always removed:

- ``resid_pre.l``: the residual stream before block ``l``; residual patches.
- ``attn_in.l``: heads that need an input of their own (an edge into them is patched, or
  EAP asks for their input gradient) get it by re-running the attention module on
  ``norm(resid_pre + delta_h)`` and keeping head ``h``'s slice of ``attn_z``. The re-run
  is a nested scope with ``alone=True``, so the pass's own hooks do not see it. Under
  grouped-query attention that slice is computed from its own key/value head, so it is exact.
- ``attn_z.l``: the per-head outputs, the slices of the output projection's *input*
  ``[batch, pos, n_heads * d_head]`` (GPT-2: ``c_proj``, a Conv1D); head patches replace slices.
- ``resid_mid.l`` and ``final_in``: the MLP's and the logits' inputs (edges).
- ``attn_out.l`` / ``mlp_out.l``: module outputs (patches and records).

Edge patching (ACDC semantics): receiver ``r`` reads ``resid + sum_{s removed} (ref_s - cur_s)``,
where ``ref_s`` is the sender's output in the reference run (corrupted, mean or zero) and
``cur_s`` its output in this run. The residual stream is the sum of the senders' outputs,
so this is exactly "the edge carries the reference value" for every removed edge at once.

The hooks act only for the pass's own forward (``Subject.hooks``): other threads' forwards
on the same model pass through.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial

import torch

from lens.circuits._graph import INPUT, LOGITS, Graph, head_node, mlp_node

def norm_names(subject) -> tuple[str, str | None]:
    """The block's norms before the attention and before the MLP (discovered, ``Subject.arch``).

    Edge patching needs pre-norm blocks: the residual stream must be a plain sum of the
    senders' outputs, read by each receiver through its own norm. Other layouts (post-norms,
    parallel attention/MLP, scaled residuals) are refused by name; head, module and residual
    patching work on every layout.
    """
    arch = subject.arch
    if arch.hybrid:
        raise ValueError(f"{arch.model_type}: edge patching (EAP, ACDC, path patching) needs every block's token "
                         f"mixing to be attention heads; only blocks {list(arch.attn_layers)} of {arch.n_layers} "
                         "have attention here. Head, attention/MLP and residual patching work on it.")
    if arch.attn_out_norm is not None:
        raise ValueError(f"{arch.model_type}: circuits need each head's output to reach the residual stream through "
                         f"the output projection alone (W_O, linear in the heads); this model has the norm "
                         f"{arch.attn_out_norm!r} between them. Capture and head edits in lens.capture work on it.")
    if arch.residual != "pre-norm" or arch.attn_norm is None or (arch.mlp is not None and arch.mlp_norm is None):
        raise ValueError(f"{arch.model_type}: edge patching (EAP, ACDC, path patching) needs pre-norm blocks, whose "
                         f"residual stream is a plain sum of the senders' outputs; this model's blocks are "
                         f"{arch.residual!r}. Head, attention/MLP and residual patching work on it.")
    return arch.attn_norm, arch.mlp_norm


def w_o(subject, layer: int) -> torch.Tensor:
    """The output projection as ``[n_heads * d_v, d_model]`` (x @ W), for nn.Linear and Conv1D."""
    w = subject.o_proj(layer).weight
    return w if subject.arch.o_proj_conv1d else w.T


@dataclass
class Patch:
    """Values for one site, applied where ``mask`` (``[batch, pos]`` bool) is True."""

    values: torch.Tensor
    mask: torch.Tensor


@dataclass
class RunSpec:
    """What one pass patches and records.

    heads: (layer, head) -> Patch of ``[batch, pos, d_head]`` (the head's o_proj-input slice).
    attn / mlp: layer -> Patch of the module output ``[batch, pos, d_model]``.
    resid: layer -> Patch of the residual before block ``layer`` (``n_layers``: before the final norm).
    edge_ref: ``[n_senders, batch, pos, d_model]`` reference sender outputs; removed: bool
    ``[n_receivers, n_senders]``; edge_mask: ``[batch, pos]`` positions where edges are patched.
    grad_receivers: give every receiver a zero leaf added to its input (its ``.grad`` is the
    metric's gradient with respect to that receiver's input: EAP).
    record: any of "z" (per-layer o_proj input), "attn", "mlp", "resid", "senders".
    """

    heads: dict = field(default_factory=dict)
    attn: dict = field(default_factory=dict)
    mlp: dict = field(default_factory=dict)
    resid: dict = field(default_factory=dict)
    edge_ref: torch.Tensor | None = None
    removed: torch.Tensor | None = None
    edge_mask: torch.Tensor | None = None
    grad_receivers: bool = False
    record: frozenset = frozenset()


def _where(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[..., None], new.to(old.dtype), old)


class _Pass:
    """The site hooks of one patched pass (``hooks``) and what they record (``records``, ``senders``, ``leaves``)."""

    def __init__(self, subject, graph: Graph, spec: RunSpec, shape):
        self.subject, self.graph, self.spec = subject, graph, spec
        self.records: dict = {"z": {}, "attn": {}, "mlp": {}, "resid": {}}
        self.resid_pre: dict[int, torch.Tensor] = {}
        self.head_inputs: dict[int, dict[int, torch.Tensor]] = {}
        self.leaves: dict[str, torch.Tensor] = {}
        b, t = shape
        d = subject.d_model
        self.need_senders = spec.removed is not None or "senders" in spec.record
        self.senders = [None] * len(graph.senders) if self.need_senders else None
        if spec.removed is not None:
            removed = spec.removed
            self.removed = removed
            self.diff = None  # [n_senders, b, t, d]: ref - cur, filled as senders run
            self.send_used = removed.any(0)  # senders with at least one removed edge
            self.recv_touched = removed.any(1)
            mask = spec.edge_mask if spec.edge_mask is not None else torch.ones(b, t, dtype=torch.bool)
            self.edge_mask = mask[..., None].to(spec.edge_ref.dtype)
            self.shape = (b, t, d)
        else:
            self.removed = None

    # --- senders and receivers ---------------------------------------------------------------
    def sent(self, name: str, out: torch.Tensor) -> None:
        if not self.need_senders:
            return
        i = self.graph.sender_index[name]
        self.senders[i] = out
        if self.removed is not None and bool(self.send_used[i]):
            if self.diff is None:
                self.diff = out.new_zeros(len(self.graph.senders), *out.shape)
            self.diff[i] = (self.spec.edge_ref[i].to(out.dtype) - out) * self.edge_mask

    def delta(self, receiver: str) -> torch.Tensor | None:
        """sum over removed senders of (ref - cur) for this receiver, or None when nothing is removed."""
        if self.removed is None:
            return None
        r = self.graph.receiver_index[receiver]
        if not bool(self.recv_touched[r]):
            return None
        w = self.removed[r].to(self.diff.dtype)  # senders not run yet have no removed edge into r
        return (w @ self.diff.flatten(1)).view(self.diff.shape[1:])

    def leaf(self, receiver: str, like: torch.Tensor) -> torch.Tensor | None:
        if not self.spec.grad_receivers:
            return None
        z = torch.zeros_like(like, requires_grad=True)
        self.leaves[receiver] = z
        return z

    def receive(self, receiver: str, x: torch.Tensor) -> torch.Tensor:
        """What ``receiver`` reads: ``x`` plus the removed edges' delta plus its EAP leaf (``x`` itself if neither)."""
        new = x
        d = self.delta(receiver)
        if d is not None:
            new = new + d
        z = self.leaf(receiver, x)
        if z is not None:
            new = new + z
        return new


    # --- the hooks ----------------------------------------------------------------------------
    def hooks(self) -> dict:
        """``{site: hook}`` for this pass: every site a patch, a record or an edge needs."""
        subject = self.subject
        edges = self.spec.removed is not None or self.spec.grad_receivers
        # Receivers read through the block's norms only when edges are patched (pre-norm blocks only).
        ln1_name, ln2_name = norm_names(subject) if edges else (None, None)
        fns = {}
        attn_layers = set(subject.attn_layers)  # hybrid models: blocks without attention get no attention hooks
        for layer in range(subject.n_layers):
            fns[("resid_pre", layer)] = partial(self.at_resid_pre, layer)
            if layer in attn_layers:
                if ln1_name:
                    fns[("attn_in", layer)] = partial(self.at_attn_in, layer,
                                                      subject.blocks[layer].get_submodule(ln1_name))
                fns[("attn_z", layer)] = partial(self.at_attn_z, layer, w_o(subject, layer))
                fns[("attn_out", layer)] = partial(self.at_attn_out, layer)
            if subject.arch.mlp is not None:
                if ln2_name:
                    fns[("resid_mid", layer)] = partial(self.at_resid_mid, layer)
                fns[("mlp_out", layer)] = partial(self.at_mlp_out, layer)
        fns["final_in"] = self.at_final_in
        return fns

    def patched(self, kind: str, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the spec's patch of ``kind`` ("resid", "attn", "mlp") at ``layer``, recorded if asked."""
        patch = getattr(self.spec, kind).get(layer)
        if patch is not None:
            x = _where(patch.mask, patch.values, x)
        if kind in self.spec.record:
            self.records[kind][layer] = x.detach()
        return x

    def at_resid_pre(self, layer: int, x: torch.Tensor, call) -> torch.Tensor:
        x = self.resid_pre[layer] = self.patched("resid", layer, x)
        if layer == 0:
            self.sent(INPUT, x)
        return x

    def at_attn_in(self, layer: int, ln1, x: torch.Tensor, call) -> None:
        """Heads with an input of their own: one batched re-run of the attention on their inputs."""
        resid = self.resid_pre[layer]
        inputs = {}
        for h in range(self.subject.n_heads):
            new = self.receive(head_node(layer, h), resid)
            if new is not resid:
                inputs[h] = new
        if not inputs:
            return None
        # The heads' inputs stacked along the batch axis (keywords with a batch axis, e.g. the
        # mask or rotary tables, repeated to match); the re-run sees only its own hook.
        heads, b, dh = list(inputs), resid.shape[0], self.subject.d_v
        stacked = ln1(torch.cat([inputs[h] for h in heads], dim=0))
        args, kwargs = _with_hidden(_repeat_batch(call.args, b, len(heads)),
                                    _repeat_batch(call.kwargs, b, len(heads)), stacked)
        seen: list[torch.Tensor] = []
        with self.subject.hooks({("attn_z", layer): lambda z, _: seen.append(z)}, alone=True):
            call.module.forward(*args, **kwargs)
        z = seen[0].unflatten(0, (len(heads), b))
        self.head_inputs[layer] = {h: z[i, ..., h * dh:(h + 1) * dh] for i, h in enumerate(heads)}
        return None

    def at_attn_z(self, layer: int, wo: torch.Tensor, z: torch.Tensor, call) -> torch.Tensor:
        n_heads, dh = self.subject.n_heads, self.subject.d_v
        own = self.head_inputs.pop(layer, {})
        patches = {h: p for (l, h), p in self.spec.heads.items() if l == layer}
        if own or patches:
            parts = list(z.split(dh, dim=-1))
            for h, v in own.items():
                parts[h] = v
            for h, p in patches.items():
                parts[h] = _where(p.mask, p.values, parts[h])
            z = torch.cat(parts, dim=-1)
        if "z" in self.spec.record:
            self.records["z"][layer] = z.detach()
        if self.need_senders:
            zh = z.unflatten(-1, (n_heads, dh))  # [b, t, head, d_head]
            woh = wo.unflatten(0, (n_heads, dh)).to(z.dtype)  # [head, d_head, d_model]
            out = torch.einsum("bthe,hed->hbtd", zh, woh)
            for h in range(n_heads):
                self.sent(head_node(layer, h), out[h])
        return z

    def at_attn_out(self, layer: int, out: torch.Tensor, call) -> torch.Tensor:
        return self.patched("attn", layer, out)

    def at_resid_mid(self, layer: int, x: torch.Tensor, call) -> torch.Tensor:
        return self.receive(mlp_node(layer), x)

    def at_mlp_out(self, layer: int, out: torch.Tensor, call) -> torch.Tensor:
        out = self.patched("mlp", layer, out)
        self.sent(mlp_node(layer), out)
        return out

    def at_final_in(self, x: torch.Tensor, call) -> torch.Tensor:
        return self.receive(LOGITS, self.patched("resid", self.subject.n_layers, x))


def _repeat_batch(obj, b: int, n: int):
    """``obj`` with every tensor whose leading axis is the batch (size ``b``) tiled ``n`` times along it."""
    if n == 1:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.repeat(n, *([1] * (obj.ndim - 1))) if obj.ndim >= 2 and obj.shape[0] == b and b > 1 else obj
    if isinstance(obj, tuple):
        return tuple(_repeat_batch(o, b, n) for o in obj)
    if isinstance(obj, list):
        return [_repeat_batch(o, b, n) for o in obj]
    if isinstance(obj, dict):
        return {k: _repeat_batch(v, b, n) for k, v in obj.items()}
    return obj


def _with_hidden(args, kwargs, new):
    if "hidden_states" in kwargs:
        kwargs = dict(kwargs, hidden_states=new)
    else:
        args = (new, *args[1:])
    return args, kwargs


def attention_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < lengths[:, None]).long()


def run(subject, tokens: torch.Tensor, lengths: torch.Tensor, spec: RunSpec | None = None, *,
        graph: Graph | None = None, grad: bool = False) -> tuple[torch.Tensor, _Pass]:
    """Run the model on right-padded ``tokens`` ``[batch, pos]`` with ``spec``'s patches.

    Returns the logits ``[batch, pos, vocab]`` and the run state (``.records``, ``.senders``,
    ``.leaves``). With ``grad=False`` it runs under ``torch.no_grad``.
    """
    spec = spec or RunSpec()
    graph = graph or Graph.of(subject)
    p = _Pass(subject, graph, spec, tuple(tokens.shape))
    dev = subject.device
    with subject.hooks(p.hooks()), contextlib.nullcontext() if grad else torch.no_grad():
        out = subject.model(input_ids=tokens.to(dev), attention_mask=attention_mask(lengths, tokens.shape[1]).to(dev),
                            use_cache=False)
    return out.logits, p


def last_logits(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[batch, vocab]`` logits at each row's last real token."""
    return logits[torch.arange(logits.shape[0]), (lengths - 1).to(logits.device)]

"""Applying edits to a running model: ``Subject.edited`` and the helpers that build edits.

``edited(subject, edits)`` routes the model's attention through ``kernels.attention``
(``lens._hook.routed``) with a session that hands every layer its compiled
``HeadEdits`` and asks for no statistic, except on layers with a row edit (ACT, VAR):
there it asks the eager backend for the targeted heads' post-softmax pattern, rewrites
the rows, and recomputes those heads' outputs as p' @ v (then gate and add), in place,
before the output projection sees them. Residual edits are forward hooks on the blocks.
Everything registered is removed when the block exits, also when it raises. The block
holds the model's lock (``lens._hook.model_lock``) throughout: other threads' workbench
calls on the same model wait until it exits.

Sessions nest: an inner ``edited`` block applies the outer edits plus its own.
``lens.capture`` activates a session of its own, so it sees only the edits passed to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from lens import _hook
from lens._edits import HOOK_EDITS, AblateHead, CalibrateSinks, Edit, ResidualEdit, RowEdit, compile_edits

__all__ = ["EditSession", "act_from_capture", "edited", "head_means", "head_outputs", "mean_ablation",
           "nnsight_logits", "residual_from_prompt", "var_sinks"]


class EditSession:
    """What ``lens._hook`` asks of an active session, for edits only (no statistics)."""

    def __init__(self, subject, edits: Sequence[Edit], *, backend: str = "auto"):
        self.subject = subject
        self.edits = tuple(edits)
        self.backend = backend
        s = subject
        self.row_edits: dict[int, list[tuple[RowEdit, list[int]]]] = {}
        self.residual: list[ResidualEdit] = []
        for e in self.edits:
            if not isinstance(e, Edit):
                raise TypeError(f"not an edit: {e!r} (use the classes in lens.edits)")
            layers, heads = e.targets(s.n_layers, s.n_heads)  # fails clearly on heads that do not exist
            if isinstance(e, RowEdit):
                for layer in layers:
                    self.row_edits.setdefault(layer, []).append((e, heads))
            elif isinstance(e, ResidualEdit):
                self.residual.append(e)
        self._compiled: dict[int, dict] = {}
        self.head_edits(0, 1)  # compile once now so a malformed edit fails before the model runs
        self.padding: torch.Tensor | None = None  # [batch, key_pos] of the current forward
        self.n_new: int | None = None

    def head_edits(self, layer: int, n_keys: int):
        if n_keys not in self._compiled:
            s = self.subject
            self._compiled[n_keys] = compile_edits(self.edits, n_layers=s.n_layers, n_heads=s.n_heads,
                                                   d_head=s.d_head, n_keys=n_keys, hooks=True)
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
            from kernels import StatOptions

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
def edited(subject, edits: Sequence[Edit], *, backend: str = "auto") -> Iterator[EditSession]:
    """Within the block ``subject.model`` runs with ``edits``; all of it is undone on exit."""
    outer = _hook._active.get()
    inherited = outer.edits if isinstance(outer, EditSession) and outer.subject is subject else ()
    session = EditSession(subject, (*inherited, *edits), backend=backend)
    handles = []
    # The model's lock is held from the first hook to the last removal (routed takes it again, re-entrantly).
    with _hook.model_lock(subject.model):
        try:
            handles.append(subject.model.register_forward_pre_hook(_padding_recorder(session), with_kwargs=True))
            for e in edits:  # the outer session's residual hooks are still registered
                if isinstance(e, ResidualEdit):
                    handles.append(subject.blocks[e.layer].register_forward_hook(_residual_hook(e)))
            with _hook.routed(subject.model), _hook.active(session):
                yield session
        finally:
            for h in handles:
                h.remove()


def _padding_recorder(session: EditSession):
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        new = ids if ids is not None else embeds
        session.n_new = int(new.shape[1]) if new is not None else None
        mask = kwargs.get("attention_mask")
        session.padding = mask.detach() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
    return hook


def _residual_hook(edit: ResidualEdit):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (edit.apply(output[0]), *output[1:])
        return edit.apply(output)
    return hook


# --- head outputs and mean ablation --------------------------------------------------------------
def _rows(subject, inputs) -> list[list[int]]:
    from lens._capture import _normalise_inputs
    from lens._capture_data import Capture

    if isinstance(inputs, Capture):
        return [inputs.tokens[b, : int(n)].tolist() for b, n in enumerate(inputs.lengths)]
    return _normalise_inputs(subject, inputs)


@torch.no_grad()
def head_outputs(subject, inputs, layers: Sequence[int] | None = None, *, batch_size: int = 8
                 ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Each head's output before the output projection: ``{layer: [batch, pos, head, d_head]}``, mask.

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
            store[layer].append(x.reshape(*x.shape[:2], subject.n_heads, subject.d_head))
        return pre

    with _hook.model_lock(subject.model):
        try:
            for l in layers:
                o_proj = subject.o_proj(l)
                handles.append(o_proj.register_forward_pre_hook(grab(l)))
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
    n_layers, n_heads = capture.n_layers, capture.n_heads
    for l, h in heads:
        if not (0 <= l < n_layers and 0 <= h < n_heads):
            raise ValueError(f"head ({l}, {h}) does not exist in the capture ({n_layers} layers x {n_heads} heads)")
    score = capture.alpha()  # [batch, layer, head, key_pos]
    lengths = capture.lengths.tolist()
    edits = []
    for l, h in heads:
        per_input = []
        for b, n in enumerate(lengths):
            thr = theta if alpha is None else alpha / n
            keys = [j for j in range(n) if score[b, l, h, j].item() > thr]
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


# --- the nnsight route for residual edits --------------------------------------------------------
def _nn_block(subject, layer: int):
    from lens._structure import get_path

    return get_path(subject.nnsight, subject.arch.layers)[layer]


@torch.no_grad()
def residual_from_prompt(subject, prompt: str, layer: int) -> torch.Tensor:
    """The residual stream after block ``layer`` for ``prompt``, ``[pos, d_model]``, via ``subject.nnsight``."""
    subject.check_heads([(layer, 0)])
    ids = subject.to_tokens(prompt)
    with _hook.model_lock(subject.model), subject.nnsight.trace(ids.to(subject.device)):
        out = _nn_block(subject, layer).output
        saved = (out[0] if isinstance(out, tuple) else out).save()
    return torch.as_tensor(saved)[0].detach().float().cpu().clone()


@torch.no_grad()
def nnsight_logits(subject, prompt: str, edits: Sequence[ResidualEdit]) -> torch.Tensor:
    """Last-token logits ``[vocab]`` of ``prompt`` with residual edits applied inside an nnsight trace.

    The same edits as the forward hooks of ``Subject.edited``, expressed as nnsight
    interventions (``block.output[:, positions] ...``); tests hold the two routes together.
    """
    ids = subject.to_tokens(prompt).to(subject.device)
    n = ids.shape[1]
    for e in edits:
        if not isinstance(e, ResidualEdit):
            raise TypeError(f"nnsight_logits applies residual edits only, got {type(e).__name__}")
        e.targets(subject.n_layers, subject.n_heads)
    with _hook.model_lock(subject.model), subject.nnsight.trace(ids):  # nnsight hooks the same modules
        for e in edits:
            out = _nn_block(subject, e.layer).output
            hidden = out[0] if isinstance(out, tuple) else out
            idx = e.position_index(n).tolist()
            if hasattr(e, "vector"):
                hidden[:, idx] += e.scale * e.vector.to(subject.device)
            else:
                vals = e.values.to(subject.device)
                hidden[:, idx] = vals if vals.ndim == 3 else vals[None].expand(ids.shape[0], *vals.shape)
        logits = subject.nnsight.output.logits.save()
    return torch.as_tensor(logits)[0, -1].detach().float().cpu()


# Re-exported for lens.edits; every hook-applied edit type, for isinstance checks.
HOOK_EDIT_TYPES = HOOK_EDITS

"""Model structure, discovered: where the blocks, attention, output projection, MLP and final norm live.

Nothing here is a table of architectures. ``discover(model)`` reads the module tree and
runs one tiny forward pass with the attention routed through the workbench (no session:
plain attention, every keyword checked), and learns from it:

* the attention modules: the modules the attention interface is called *from*, in call
  order, and from the q/k/v they pass the query heads, key/value heads and head size;
* the decoder blocks: the ``ModuleList`` holding one attention module per entry;
* the output projection: the ``nn.Linear`` (or GPT-2 ``Conv1D``) inside the attention module
  whose input *is* the attention output, element for element;
* the final norm: the module outside the blocks whose output is what the unembedding reads;
* the MLP: the block's one remaining child with parameters (None for attention-only blocks);
* per layer, the attention features the model passes: sliding window, soft-capping, learned
  sinks (which a model might pass on some layers only).

A model whose structure cannot be found fails here, at load, with an error naming what is
missing; the keyword check also runs here, so a model whose attention the workbench cannot
reproduce is refused at load and never inside a capture. ``lens.model._arch`` holds overrides only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from lens.model import _lazy, _routing
from lens.model._sites import module_hooks

__all__ = ["Structure", "StructureError", "discover"]

#: Tokens in the traced pass: long enough for a sliding window of a few positions to be visible.
TRACE_TOKENS = 6


class StructureError(ValueError):
    """The model's structure could not be found; the message says what is missing."""


@dataclass(frozen=True)
class Structure:
    """Where things live in one loaded model, and what its attention does per layer.

    Paths are dotted attribute paths: ``layers`` from the CausalLM to the ModuleList of
    blocks, ``attn`` and ``mlp`` from a block, ``o_proj`` from the attention module,
    ``final_norm`` from the CausalLM. ``mlp`` is the module whose output is the MLP's output and
    ``mlp_in`` the one that reads its input: the same child, except where the MLP's
    projections sit straight on the block (OPT: ``fc1`` reads, ``fc2`` writes). ``o_proj_conv1d``: GPT-2's Conv1D (weight [d_in, d_out]).
    ``attn_norm`` / ``mlp_norm``: the block's norms whose outputs the attention / MLP read
    (None when it reads the residual stream itself). ``residual``: how a block adds up,
    ``"pre-norm"`` (x + attn(norm(x)), then + mlp(norm(.)): the sum of senders' outputs that
    edge patching needs), ``"parallel"`` (attention and MLP both read the block input),
    ``"post-norm"`` (a norm on a sublayer's output before it is added) or ``"other"``.
    """

    model_type: str
    layers: str
    attn: str
    mlp: str | None
    o_proj: str
    o_proj_conv1d: bool
    final_norm: str
    tl_architecture: str
    n_layers: int  # decoder blocks
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_v: int = 0  # a head's value (and output) size: d_head, except in latent attention (DeepSeek MLA)
    mlp_in: str | None = None  # the module reading the MLP's input: ``mlp`` itself, or OPT's ``fc1``
    # A norm between the attention output and the output projection (BitNet), or None. Head
    # outputs are then read before it, and what needs W_O to be linear in them is refused.
    attn_out_norm: str | None = None
    # An elementwise gate in [0, 1] on the attention output before the output projection (the
    # Qwen3-Next output gate): per head, so head reads, patches and ablation at the o_proj input
    # still act on one head each, but ||W_O v|| no longer says what a head writes.
    attn_out_gated: bool = False
    # The blocks that have attention, in order: every block, except in hybrid models. The
    # per-layer tuples below (sliding_window, ...) follow this order.
    attn_layers: tuple[int, ...] = ()
    attn_norm: str | None = None
    mlp_norm: str | None = None
    residual: str = "pre-norm"
    sliding_window: tuple[int | None, ...] = ()
    softcap: tuple[float | None, ...] = ()
    learned_sinks: tuple[bool, ...] = ()
    scale: tuple[float | None, ...] = ()
    overrides: dict = field(default_factory=dict)

    @property
    def hybrid(self) -> bool:
        """Attention in some blocks only (the others mix tokens another way)."""
        return len(self.attn_layers) != self.n_layers

    @property
    def has_learned_sinks(self) -> bool:
        return any(self.learned_sinks)

    def features(self) -> list[str]:
        """The attention features this model uses, in words (for ``lens info`` and tables)."""
        out = []
        windows = {w for w in self.sliding_window if w is not None}
        if windows:
            local = sum(w is not None for w in self.sliding_window)
            n_attn = len(self.attn_layers)
            kind = "sliding window" if local == n_attn else f"local/global ({local} of {n_attn} local)"
            out.append(f"{kind} {'/'.join(map(str, sorted(windows)))}")
        caps = {c for c in self.softcap if c is not None}
        if caps:
            out.append(f"soft-capping {'/'.join(f'{c:g}' for c in sorted(caps))}")
        if self.has_learned_sinks:
            out.append("learned sinks")
        if self.n_kv_heads != self.n_heads:
            out.append("GQA" if self.n_kv_heads > 1 else "MQA")
        if self.hybrid:
            out.append(f"attention in {len(self.attn_layers)} of {self.n_layers} blocks")
        if self.d_v != self.d_head:
            out.append(f"value heads of {self.d_v} (queries and keys {self.d_head})")
        return out


def _is_projection(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, _lazy.Conv1D))


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or "norm" in type(m).__name__.lower()


@torch.no_grad()
def discover(model, *, overrides: dict | None = None) -> Structure:
    """Find the structure of a transformers causal LM (see the module docstring)."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    names = {id(m): n for n, m in model.named_modules()}
    trace = _trace(model, model_type)
    calls = trace.calls
    n_heads, n_kv_heads, d_head, d_v = _attention_shape(model_type, calls)

    layers_path, attn_path, blocks, attn_layers = _blocks(model, model_type, names, [c[0] for c in calls])
    first = blocks[attn_layers[0]]  # the layout is read off the first block with attention
    o_proj, conv1d, attn_out_norm, gated = _output_projection(model_type, names, calls, trace.proj_inputs,
                                                              trace.outputs, n_heads * d_v)
    final_norm = _final_norm(model_type, model, names, blocks, trace.outputs, trace.head_input)
    io = {(kind, name): t for (block, kind, name), t in trace.block_io.items() if block == id(first)}
    block_in = io.get(("in", ""))  # the residual stream entering the block: its width is d_model
    d_model = block_in.shape[-1] if block_in is not None else model.get_input_embeddings().weight.shape[1]
    mlp_in, mlp = _mlp(model_type, first, attn_path, d_model)
    for i, block in enumerate(blocks):  # every block has the MLP where the first attention block has it
        if mlp is not None and not hasattr(block, mlp):
            raise StructureError(f"{model_type}: block {i} has no MLP at {mlp!r}, where block {attn_layers[0]} "
                                 "has it; not supported")
    attn_norm, mlp_norm, residual = _residual_layout(first, attn_path, mlp_in, io)
    overrides = dict(overrides or {})
    structure = Structure(
        model_type=model_type, layers=layers_path, attn=attn_path, mlp=mlp, mlp_in=mlp_in, o_proj=o_proj,
        attn_out_norm=attn_out_norm, attn_out_gated=gated, o_proj_conv1d=conv1d,
        final_norm=final_norm, attn_norm=attn_norm, mlp_norm=mlp_norm, residual=residual,
        tl_architecture=type(model).__name__, n_layers=len(blocks), attn_layers=attn_layers, n_heads=n_heads,
        n_kv_heads=n_kv_heads, d_head=d_head, d_v=d_v,
        sliding_window=tuple(c[2]["sliding_window"] for c in calls),
        softcap=tuple(c[2]["softcap"] for c in calls),
        learned_sinks=tuple(c[2]["sinks"] is not None for c in calls),
        scale=tuple(c[2]["scale"] for c in calls),
    )
    if overrides:
        structure = replace(structure, overrides=overrides, **overrides)
    return structure


@dataclass
class _Trace:
    """What ``discover``'s one traced forward pass saw.

    ``calls``: (module, (n_heads, n_kv_heads, d_head, d_v), the attention call, its output as
    the module receives it [b, q, h, d]) for every routed attention call, in order;
    ``proj_inputs``: each projection's input, and ``outputs``: each module's tensor output, by
    module id; ``head_input``: what entered the unembedding; ``block_io``: (id of a candidate
    block, "in"|"out", child name) -> tensor, for every block ``_candidate_blocks`` finds.
    """

    calls: list[tuple[nn.Module, tuple, dict, torch.Tensor]]
    proj_inputs: dict[int, torch.Tensor]
    outputs: dict[int, torch.Tensor]
    head_input: list[torch.Tensor]
    block_io: dict[tuple[int, str, str], torch.Tensor | None]


def _trace(model, model_type: str) -> _Trace:
    """Run one forward pass with the attention routed and hooks on every module (see ``_Trace``)."""
    calls: list[tuple[nn.Module, tuple, dict, torch.Tensor]] = []

    def tracer(module, q, k, v, call, result):
        out = result.output.transpose(1, 2).detach()  # [b, q, h, d], as the module receives it
        calls.append((module, (q.shape[1], k.shape[1], q.shape[-1], v.shape[-1]), call, out))

    # Inputs of every projection and outputs of every module outside the decoder blocks: the
    # output projection and the final norm are found by what flows into and out of them.
    proj_inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    head_input: list[torch.Tensor] = []
    # (id of a candidate block, "in"|"out", child name) -> tensor: every ModuleList's entries are
    # watched, since which list holds the blocks is known only after the pass.
    block_io: dict[tuple[int, str, str], torch.Tensor | None] = {}
    entries = []
    for m in model.modules():
        if _is_projection(m):
            entries.append((m, "pre", lambda mod, args, kwargs: proj_inputs.__setitem__(id(mod), args[0].detach())
                            if args else None))
        entries.append((m, "post", lambda mod, args, kwargs, out: outputs.__setitem__(id(mod), out.detach())
                        if isinstance(out, torch.Tensor) else None))
    for first in _candidate_blocks(model):
        for child_name, child in [("", first), *first.named_children()]:
            key = (id(first), child_name)
            entries.append((child, "pre", lambda mod, args, kwargs, k=key:
                            _keep(block_io, (k[0], "in", k[1]), _hidden(args, kwargs))))
            entries.append((child, "post", lambda mod, args, kwargs, out, k=key:
                            _keep(block_io, (k[0], "out", k[1]), _first(out))))
    unembed = model.get_output_embeddings()
    if unembed is None:
        raise StructureError(f"{model_type}: the model has no output embedding "
                             "(get_output_embeddings() is None); the workbench needs a causal LM")
    entries.append((unembed, "pre", lambda mod, args, kwargs: head_input.append(args[0].detach())))
    ids = _trace_ids(model)
    try:
        # hooks read only this thread's traced pass (lens.model._sites); the routing holds the model's lock
        with module_hooks(entries), _routing.routed(model), _routing.traced(tracer):
            model(input_ids=ids, use_cache=False)
    except (StructureError, _routing.UnsupportedAttention):
        raise  # a refusal by name, from the attention call itself
    except Exception as err:  # the model's own code failed with the routing in place
        how = ("no attention module called the attention interface before it failed, so its attention "
               "does not go through transformers' AttentionInterface" if not calls else
               f"it failed after {len(calls)} attention call(s)")
        raise StructureError(f"{model_type}: the traced pass raised {type(err).__name__}: {err}; {how}. "
                             "The workbench needs a transformers model built on AttentionInterface") from err
    if not calls:
        raise StructureError(f"{model_type}: no attention module called the attention interface in a traced pass "
                             f"(attention implementation {getattr(model.config, '_attn_implementation', '?')!r}); "
                             "the workbench needs a transformers model built on AttentionInterface")
    return _Trace(calls, proj_inputs, outputs, head_input, block_io)


def _attention_shape(model_type: str, calls) -> tuple[int, int, int, int]:
    """(n_heads, n_kv_heads, d_head, d_v), the same in every attention call, each module called once."""
    modules = [c[0] for c in calls]
    if len({id(m) for m in modules}) != len(modules):
        raise StructureError(f"{model_type}: an attention module was called twice in one pass (shared layers); "
                             "not supported")
    shapes = {c[1] for c in calls}
    if len(shapes) != 1:
        raise StructureError(f"{model_type}: attention shapes differ between layers {sorted(shapes)} "
                             "(heads, kv heads, head size); not supported")
    return shapes.pop()


def _trace_ids(model) -> torch.Tensor:
    vocab = model.get_input_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    return (torch.arange(1, TRACE_TOKENS + 1, device=device) % vocab)[None]


def _blocks(model, model_type, names, modules) -> tuple[str, str, nn.ModuleList, tuple[int, ...]]:
    """The ModuleList of decoder blocks, where the attention sits in a block, and which blocks have it.

    Every block has one attention module in most models; hybrid models (Qwen3-Next, Jamba,
    LFM2, ...) have it in some blocks only, the others mixing tokens another way (linear
    attention, state-space, convolution). The attention blocks are those whose attention
    module the traced pass called, in block order, each once.
    """
    first = names[id(modules[0])]
    parts = first.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        if parts[cut].isdigit():
            layers_path, attn_path = ".".join(parts[:cut]), ".".join(parts[cut + 1:])
            break
    else:
        raise StructureError(f"{model_type}: the attention module {first!r} does not sit in a list of blocks")
    blocks = model.get_submodule(layers_path)
    where = {f"{layers_path}.{i}.{attn_path}": i for i in range(len(blocks))}
    found = [names[id(m)] for m in modules]
    attn_layers = tuple(where.get(name, -1) for name in found)
    if -1 in attn_layers or list(attn_layers) != sorted(set(attn_layers)):
        raise StructureError(f"{model_type}: attention modules {found[:4]}... are not at {attn_path!r} of blocks of "
                             f"{layers_path!r}, one per block, in order")
    return layers_path, attn_path, blocks, attn_layers


def _output_projection(model_type, names, calls, proj_inputs, outputs, width) -> tuple[str, bool, str | None, bool]:
    """The projection inside the attention module that consumes the attention output: unchanged,
    through one norm (BitNet's ``attn_sub_norm``), or through an elementwise gate in [0, 1]
    (Qwen3-Next's sigmoid output gate). Returns (projection, Conv1D?, that norm or None, gated?)."""
    module, _, _, out = calls[0]
    flat = out.reshape(-1, width)
    candidates = [(n, m) for n, m in module.named_modules() if n and _is_projection(m)]
    for rel, proj in candidates:
        x = proj_inputs.get(id(proj))
        if x is not None and x.shape[-1] == width and torch.equal(x.reshape(-1, width), flat):
            return rel, isinstance(proj, _lazy.Conv1D), None, False
    norms = [(n, m) for n, m in module.named_modules() if n and _is_norm(m)]
    for norm_rel, norm in norms:
        normed = outputs.get(id(norm))
        if normed is None or normed.shape[-1] != width or not _norm_of(norm, flat, normed.reshape(-1, width)):
            continue
        for rel, proj in candidates:
            x = proj_inputs.get(id(proj))
            if x is not None and x.shape[-1] == width and torch.equal(x.reshape(-1, width), normed.reshape(-1, width)):
                return rel, isinstance(proj, _lazy.Conv1D), norm_rel, False
    for rel, proj in candidates:
        x = proj_inputs.get(id(proj))
        if x is not None and x.shape[-1] == width and x.numel() == flat.numel() and _gated(flat, x.reshape(-1, width)):
            return rel, isinstance(proj, _lazy.Conv1D), None, True
    raise StructureError(
        f"{model_type}: no nn.Linear or Conv1D inside {names[id(module)]!r} reads the attention output unchanged "
        f"(candidates: {[n for n, _ in candidates]}); a gate or another step between the attention and the "
        "output projection is not supported")


def _gated(out: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``x = out * g`` elementwise with every g in [0, 1] (and some g below 1): a sigmoid output gate."""
    live = out.abs() > 1e-6
    if not live.any() or not torch.all(x[~live].abs() <= 1e-6):
        return False
    g = x[live] / out[live]
    return bool(((g >= -1e-6) & (g <= 1 + 1e-6)).all() and (g < 1 - 1e-4).any())


def _norm_of(norm: nn.Module, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether ``norm(x)`` is ``y`` (the traced pass recorded only outputs, so the norm is rerun)."""
    try:
        return bool(torch.allclose(norm(x), y, atol=1e-6, rtol=1e-5))
    except Exception:  # a norm that wants another shape is not this one
        return False


def _final_norm(model_type, model, names, blocks, outputs, head_input) -> str:
    """The module outside the blocks whose output the unembedding reads."""
    if not head_input:
        raise StructureError(f"{model_type}: the unembedding was not called in the traced pass")
    x = head_input[-1]
    inside = {id(m) for b in blocks for m in b.modules()}
    best = None
    for name, m in model.named_modules():
        if id(m) in inside or not name or id(m) not in outputs:
            continue
        out = outputs[id(m)]
        if out.shape == x.shape and torch.equal(out, x) and _is_norm(m):
            best = name  # the deepest match wins (named_modules lists parents first)
    if best is None:
        raise StructureError(f"{model_type}: no norm module outside the blocks produces what the unembedding reads "
                             "(final norm not found)")
    return best


def _mlp(model_type, block, attn_path, d_model: int) -> tuple[str | None, str | None]:
    """The block's MLP as (input end, output end): the paths of the modules that read the MLP's
    input and write its output.

    Usually one child with parameters that is neither the attention nor a norm (both ends
    are that child). OPT-style blocks hold the MLP's two projections straight on the block
    (``fc1``, ``fc2``): then the projection that reads the residual width is the input end
    and the one that writes it, the output end.
    """
    attn_child = attn_path.split(".")[0]
    rest = [n for n, m in block.named_children()
            if n != attn_child and not _is_norm(m) and any(True for _ in m.parameters())]
    if not rest:
        return None, None
    if len(rest) == 1:
        return rest[0], rest[0]
    named = [n for n in rest if any(k in n.lower() for k in ("mlp", "feed_forward", "ffn", "moe"))]
    if len(named) == 1:
        return named[0], named[0]
    projections = {n: getattr(block, n) for n in rest if _is_projection(getattr(block, n))}
    if len(projections) == 2 == len(rest):
        widths = {n: _in_out(m) for n, m in projections.items()}
        first = [n for n, (i, o) in widths.items() if i == d_model and o != d_model]
        last = [n for n, (i, o) in widths.items() if o == d_model and i != d_model]
        if len(first) == 1 and len(last) == 1:
            return first[0], last[0]
    raise StructureError(f"{model_type}: cannot tell which child of a block is the MLP among {rest}")


def _in_out(m: nn.Module) -> tuple[int, int]:
    """(input width, output width) of an nn.Linear or a GPT-2 Conv1D (weight [d_in, d_out])."""
    w = m.weight
    return (w.shape[1], w.shape[0]) if isinstance(m, nn.Linear) else (w.shape[0], w.shape[1])


def _keep(store: dict, key, value) -> None:
    """Record the first call's tensor only (a module called twice keeps its first input)."""
    store.setdefault(key, value)


def _first(out):
    out = out[0] if isinstance(out, tuple) and out else out
    return out.detach() if isinstance(out, torch.Tensor) else None


def _hidden(args, kwargs):
    x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
    return x.detach() if isinstance(x, torch.Tensor) else None


def _candidate_blocks(model) -> list[nn.Module]:
    """Every entry of every ModuleList whose entries have children: the decoder blocks are among them
    (all are watched: in a hybrid model the first block with attention is known only after the pass)."""
    return [block for m in model.modules()
            if isinstance(m, nn.ModuleList) and len(m) and any(True for _ in m[0].children()) for block in m]


def _same(a, b) -> bool:
    return a is not None and b is not None and a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def _residual_layout(block, attn_path: str, mlp: str | None, io) -> tuple[str | None, str | None, str]:
    """Which norms feed the attention and the MLP, and how the block adds up (see ``Structure``)."""
    if ("in", "") not in io:
        return None, None, "other"
    x = io[("in", "")]
    attn_child = attn_path.split(".")[0]
    attn_in, attn_out = io.get(("in", attn_child)), io.get(("out", attn_child))
    norms = [n for n, m in block.named_children() if _is_norm(m)]
    attn_norm = next((n for n in norms if _same(io.get(("out", n)), attn_in)), None)
    if attn_norm is None and not _same(attn_in, x):
        return None, None, "other"
    if any(_same(io.get(("in", n)), attn_out) for n in norms):
        return attn_norm, None, "post-norm"  # the attention output is normed before it is added
    if mlp is None:
        return attn_norm, None, "pre-norm"
    mlp_in = io.get(("in", mlp))
    mlp_norm = next((n for n in norms if _same(io.get(("out", n)), mlp_in)), None)
    if _same(mlp_in, attn_in) or (mlp_norm is not None and _same(io.get(("in", mlp_norm)), x)):
        return attn_norm, mlp_norm, "parallel"
    mid = x + attn_out if attn_out is not None else None
    if mlp_norm is not None and _same(io.get(("in", mlp_norm)), mid):
        return attn_norm, mlp_norm, "pre-norm"
    return attn_norm, mlp_norm, "other"

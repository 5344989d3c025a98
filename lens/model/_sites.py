"""Named sites of a model and the one way the workbench hooks it: ``hooks(subject, {site: fn})``.

A *site* is a place in the forward pass where a tensor can be read or replaced, named the
same on every architecture (``Site("attn_z", 3)``, or ``"attn_z.3"``):

=============  =======================================================  ======================
site           the tensor                                               hooked at
=============  =======================================================  ======================
model_in       the input ids (or embeddings); read-only                 the model's input
embed_out      the token embeddings ``[batch, pos, d_model]``           the embedding's output
resid_pre.l    the residual stream entering block ``l``                 the block's input
attn_in.l      what the attention reads (after the block's norm)        the attention's input
attn_z.l       the heads' outputs side by side ``[b, pos, H * d_v]``    the output projection's
               (head ``h`` = slice ``h*d_v:(h+1)*d_v``)                 input (or its norm)
attn_out.l     the attention's output ``[b, pos, d_model]``             the attention's output
resid_mid.l    the residual stream entering the MLP's norm              the pre-MLP norm's input
mlp_out.l      the MLP's output                                         the MLP's output
resid_post.l   the residual stream leaving block ``l``                  the block's output
final_in       the residual stream entering the final norm              the final norm's input
=============  =======================================================  ======================

A hook is ``fn(x, call) -> replacement or None``: ``x`` is the site's tensor and ``call``
(``HookCall``) carries the module, its arguments and, after the module ran, its output.

**Scoped, and only for the context that installed them.** ``hooks`` registers the torch
hooks on entry and removes them on exit, also when the block raises; while they are
registered they act only for forward passes run *in the context that entered the block*
(this thread, or this asyncio task): a plain ``subject.model(...)`` from another thread
passes through untouched, neither crashing nor changed. ``alone=True`` hides the scopes
entered before it in this context for the block (a re-run of one module inside a hook
sees only the inner scope's hooks). This module is the only place in ``lens`` that calls
``register_forward_hook`` / ``register_forward_pre_hook``; ``module_hooks`` is the same
mechanism on raw modules, for the structure discovery that runs before a Subject exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SITES", "HookCall", "Site", "hooks", "module_hooks"]

#: name -> (when the hook runs, whether the site has a layer, what it is). See the module docstring.
SITES: dict[str, tuple[str, bool, str]] = {
    "model_in": ("pre", False, "the model's input ids or embeddings (read-only)"),
    "embed_out": ("post", False, "the token embeddings"),
    "resid_pre": ("pre", True, "the residual stream entering the block"),
    "attn_in": ("pre", True, "the attention's input, after the block's norm"),
    "attn_z": ("pre", True, "the heads' outputs side by side, the output projection's input"),
    "attn_out": ("post", True, "the attention's output"),
    "resid_mid": ("pre", True, "the residual stream entering the pre-MLP norm"),
    "mlp_out": ("post", True, "the MLP's output"),
    "resid_post": ("post", True, "the residual stream leaving the block"),
    "final_in": ("pre", False, "the residual stream entering the final norm"),
}
_HIDDEN_KEYS = ("hidden_states", "input", "x")  # how modules name their tensor input when passed by keyword


@dataclass(frozen=True)
class Site:
    """One named site: ``Site("resid_pre", 3)``; ``Site.of("resid_pre.3")`` parses the string form."""

    name: str
    layer: int | None = None

    def __post_init__(self):
        if self.name not in SITES:
            raise ValueError(f"unknown site {self.name!r}; the sites are {', '.join(SITES)}")
        if SITES[self.name][1] != (self.layer is not None):
            form = f"{self.name}.<layer>" if SITES[self.name][1] else self.name
            raise ValueError(f"site {self.name!r} is written {form!r}, got layer {self.layer!r}")

    @classmethod
    def of(cls, site: Site | str | tuple) -> Site:
        if isinstance(site, Site):
            return site
        if isinstance(site, tuple):
            return cls(*site)
        name, _, layer = str(site).partition(".")
        return cls(name, int(layer) if layer else None)

    def __str__(self) -> str:
        return self.name if self.layer is None else f"{self.name}.{self.layer}"


@dataclass
class HookCall:
    """What a site hook sees besides the site's tensor: the module and its call."""

    site: Site
    module: nn.Module
    args: tuple
    kwargs: dict
    output: object = None


Hook = Callable[[torch.Tensor, HookCall], "torch.Tensor | None"]


# --- scoping ------------------------------------------------------------------------------------
class _Scope:
    __slots__ = ("alone",)

    def __init__(self, alone: bool):
        self.alone = alone


_scopes: ContextVar[tuple[_Scope, ...]] = ContextVar("lens_hook_scopes", default=())


def _live(scope: _Scope) -> bool:
    """Whether ``scope``'s hooks act for a forward running in the current context."""
    for s in reversed(_scopes.get()):
        if s is scope:
            return True
        if s.alone:
            return False
    return False


@contextlib.contextmanager
def module_hooks(entries: Iterable[tuple[nn.Module, str, Callable]], *, alone: bool = False) -> Iterator[None]:
    """Torch hooks on raw modules for the block, acting only for this context's forwards.

    ``entries``: ``(module, "pre" | "post", fn)`` with torch's ``with_kwargs`` signatures,
    ``fn(module, args, kwargs)`` and ``fn(module, args, kwargs, output)``.
    """
    scope = _Scope(alone)
    token = _scopes.set((*_scopes.get(), scope))
    handles = []
    try:
        for module, when, fn in entries:
            gated = _gated(scope, fn)
            if when == "pre":
                handles.append(module.register_forward_pre_hook(gated, with_kwargs=True))
            elif when == "post":
                handles.append(module.register_forward_hook(gated, with_kwargs=True))
            else:
                raise ValueError(f"a hook runs 'pre' or 'post', got {when!r}")
        yield
    finally:
        for h in handles:
            h.remove()
        _scopes.reset(token)


def _gated(scope: _Scope, fn: Callable) -> Callable:
    def hook(*call):
        return fn(*call) if _live(scope) else None
    return hook


# --- sites ---------------------------------------------------------------------------------------
def site_module(subject, site: Site) -> nn.Module:
    """The module whose input (``pre`` sites) or output (``post``) is ``site``'s tensor."""
    arch, name, layer = subject.arch, site.name, site.layer
    if layer is not None and not 0 <= layer < subject.n_layers:
        raise ValueError(f"site {site}: {subject.name} has layers 0..{subject.n_layers - 1}")
    if name == "model_in":
        return subject.model
    if name == "embed_out":
        return subject.model.get_input_embeddings()
    if name == "final_in":
        return subject.model.get_submodule(arch.final_norm)
    if name in ("resid_pre", "resid_post"):
        return subject.blocks[layer]
    if name in ("attn_in", "attn_out"):
        return subject.attn_module(layer)  # refuses a block without attention by name
    if name == "attn_z":
        return subject.head_site(layer)
    if arch.mlp is None:
        raise ValueError(f"site {site}: {subject.name}'s blocks have no MLP the workbench found")
    block = subject.blocks[layer]
    if name == "mlp_out":
        return block.get_submodule(arch.mlp)
    if arch.mlp_norm is None:  # resid_mid
        raise ValueError(f"site {site}: {subject.name}'s blocks ({arch.residual}) have no norm in front of the MLP "
                         "whose input is the residual stream")
    return block.get_submodule(arch.mlp_norm)


def _tensor_in(site: Site, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Callable]:
    """A pre site's tensor and a function putting a replacement back where it came from."""
    if site.name == "model_in":
        x = args[0] if args else kwargs.get("input_ids")
        return (x if x is not None else kwargs.get("inputs_embeds")), None
    if args:
        return args[0], lambda new: ((new, *args[1:]), kwargs)
    key = next((k for k in _HIDDEN_KEYS if k in kwargs), None)
    if key is None:
        raise TypeError(f"site {site}: the module was called without a tensor input ({sorted(kwargs)})")
    return kwargs[key], lambda new: (args, {**kwargs, key: new})


def _site_entry(subject, site: Site, fn: Hook) -> tuple[nn.Module, str, Callable]:
    module = site_module(subject, site)
    when = SITES[site.name][0]
    if when == "pre":
        def pre(mod, args, kwargs):
            x, put = _tensor_in(site, args, kwargs)
            new = fn(x, HookCall(site, mod, args, kwargs))
            if new is None or new is x:
                return None
            if put is None:
                raise ValueError(f"site {site} is read-only: its hook returned a tensor")
            return put(new)
        return module, "pre", pre

    def post(mod, args, kwargs, output):
        x = output[0] if isinstance(output, tuple) else output
        new = fn(x, HookCall(site, mod, args, kwargs, output))
        if new is None or new is x:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return module, "post", post


def hooks(subject, fns: Mapping[Site | str | tuple, Hook], *, alone: bool = False):
    """Context manager: ``fn(x, call)`` at each site for the block (see the module docstring).

    ``fns`` maps sites (``Site``, ``"attn_z.3"`` or ``("attn_z", 3)``) to hooks; a hook
    returning a tensor replaces the site's tensor. Hooks at one module run in the order
    the scopes were entered, outer first.
    """
    return module_hooks([_site_entry(subject, Site.of(s), fn) for s, fn in fns.items()], alone=alone)

"""Named sites and the one scoped-hook mechanism (``lens.model._sites``, ``Subject.hooks``).

Each site's tensor is checked against what the stock model reports on its own
(``output_hidden_states``) or against the module it names; a replacement acts; hooks are
removed on exit, also on error; ``alone=True`` hides the outer scopes; and nothing else in
``lens`` registers a torch forward hook.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from _tiny_archs import build

import lens
from lens.model._sites import SITES, Site

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")
LENS = Path(lens.__file__).resolve().parent


@pytest.fixture(scope="module")
def subject():
    from lens.model.organisms import make_tokenizer

    return lens.Subject(build("llama", seed=7), make_tokenizer(), name="tiny-llama-sites")


def _ids(s):
    return s.to_tokens(["t01 t02 t03 t04 t05", "t07 t08 t09"])


def _hooks_left(s) -> int:
    return sum(len(getattr(m, d)) for m in s.model.modules() for d in HOOK_DICTS)


def test_residual_sites_are_the_models_hidden_states(subject):
    s, ids = subject, _ids(subject)
    seen = {}

    def keep(name):
        return lambda x, call: seen.__setitem__(name, x.detach().clone())

    sites = {("resid_pre", l): keep(f"pre{l}") for l in range(s.n_layers)}
    sites.update({("resid_post", l): keep(f"post{l}") for l in range(s.n_layers)})
    sites.update({"final_in": keep("final"), "embed_out": keep("embed")})
    with torch.no_grad(), s.hooks(sites):
        out = s.model(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states  # embeddings, then each block's output (the last one after the final norm)
    assert torch.equal(seen["embed"], hidden[0]) and torch.equal(seen["pre0"], hidden[0])
    for l in range(s.n_layers - 1):
        assert torch.equal(seen[f"post{l}"], hidden[l + 1])
        assert torch.equal(seen[f"pre{l + 1}"], seen[f"post{l}"])
    assert torch.equal(seen["final"], seen[f"post{s.n_layers - 1}"])


def test_attention_sites_compose_to_the_attention_output(subject):
    """attn_z (heads side by side) through the output projection is attn_out; attn_in is the normed resid."""
    s, ids, layer = subject, _ids(subject), 1
    seen = {}
    keep = {name: (lambda name: lambda x, call: seen.__setitem__(name, x.detach().clone()))(name)
            for name in ("attn_in", "attn_z", "attn_out", "resid_pre", "resid_mid", "mlp_out")}
    with torch.no_grad(), s.hooks({(name, layer): fn for name, fn in keep.items()}):
        s.model(input_ids=ids)
    assert seen["attn_z"].shape == (*ids.shape, s.n_heads * s.d_v)
    torch.testing.assert_close(s.o_proj(layer)(seen["attn_z"]), seen["attn_out"], atol=0, rtol=0)
    block = s.blocks[layer]
    torch.testing.assert_close(block.get_submodule(s.arch.attn_norm)(seen["resid_pre"]), seen["attn_in"],
                               atol=0, rtol=0)
    torch.testing.assert_close(seen["resid_pre"] + seen["attn_out"], seen["resid_mid"], atol=0, rtol=0)
    torch.testing.assert_close(block.get_submodule(s.arch.mlp)(block.get_submodule(s.arch.mlp_norm)(seen["resid_mid"])),
                               seen["mlp_out"], atol=0, rtol=0)


def test_a_replacement_acts_and_an_identity_hook_changes_nothing(subject):
    s, ids = subject, _ids(subject)
    with torch.no_grad():
        plain = s.model(input_ids=ids).logits
        with s.hooks({f"{name}.{l}": (lambda x, call: x.clone()) for name in ("attn_z", "mlp_out", "resid_post")
                      for l in range(s.n_layers)}):
            same = s.model(input_ids=ids).logits
        with s.hooks({"mlp_out.0": lambda x, call: torch.zeros_like(x)}):
            zeroed = s.model(input_ids=ids).logits
        mlp = s.blocks[0].get_submodule(s.arch.mlp)
        handle = mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))  # the reference: a raw hook
        try:
            want = s.model(input_ids=ids).logits
        finally:
            handle.remove()
    assert torch.equal(same, plain)
    assert torch.equal(zeroed, want) and not torch.equal(zeroed, plain)


def test_hooks_are_removed_on_exit_and_on_error(subject):
    s, ids = subject, _ids(subject)
    before = _hooks_left(s)  # transformers' own output recorders
    with s.hooks({"resid_post.0": lambda x, call: None, "model_in": lambda x, call: None}):
        assert _hooks_left(s) == before + 2
    assert _hooks_left(s) == before
    with pytest.raises(RuntimeError, match="from the hook"), torch.no_grad():
        with s.hooks({"attn_out.1": lambda x, call: (_ for _ in ()).throw(RuntimeError("from the hook"))}):
            s.model(input_ids=ids)
    assert _hooks_left(s) == before


def test_alone_hides_the_outer_scopes_and_nesting_adds_up(subject):
    s, ids = subject, _ids(subject)
    calls = []
    with torch.no_grad(), s.hooks({"resid_post.0": lambda x, call: calls.append("outer")}):
        with s.hooks({"resid_post.0": lambda x, call: calls.append("inner")}):
            s.model(input_ids=ids)
        assert calls == ["outer", "inner"]  # outer first
        calls.clear()
        with s.hooks({"resid_post.0": lambda x, call: calls.append("alone")}, alone=True):
            s.model(input_ids=ids)
        assert calls == ["alone"]
        calls.clear()
        s.model(input_ids=ids)
        assert calls == ["outer"]


def test_model_in_sees_the_call_and_is_read_only(subject):
    s, ids = subject, _ids(subject)
    mask = (ids != s.pad_token_id).long()
    seen = []
    with torch.no_grad(), s.hooks({"model_in": lambda x, call: seen.append((x, call.kwargs["attention_mask"]))}):
        s.model(input_ids=ids, attention_mask=mask)
    assert torch.equal(seen[0][0], ids) and torch.equal(seen[0][1], mask)
    with pytest.raises(ValueError, match="site model_in is read-only"), torch.no_grad():
        with s.hooks({"model_in": lambda x, call: x + 1}):
            s.model(input_ids=ids)


@pytest.mark.parametrize("site, message", [
    ("nope.1", "unknown site 'nope'"),
    ("resid_pre", r"written 'resid_pre.<layer>'"),
    ("final_in.2", r"written 'final_in'"),
    ("attn_z.9", r"has layers 0\.\.2"),
])
def test_bad_sites_are_refused_by_name(subject, site, message):
    before = _hooks_left(subject)
    with pytest.raises(ValueError, match=message):
        subject.hooks({site: lambda x, call: None})
    assert _hooks_left(subject) == before


def test_every_site_is_documented_and_parses_both_ways():
    doc = lens.model._sites.__doc__
    for name, (when, layered, _) in SITES.items():
        assert name in doc
        site = Site(name, 3 if layered else None)
        assert Site.of(str(site)) == site == Site.of((name, 3) if layered else (name,))


def test_only_the_sites_module_registers_forward_hooks():
    """The one hook mechanism: every other module goes through ``Subject.hooks`` / ``module_hooks``."""
    pattern = re.compile(r"register_forward_(pre_)?hook\(")
    users = sorted(str(p.relative_to(LENS)) for p in LENS.rglob("*.py") if pattern.search(p.read_text()))
    assert users == ["model/_sites.py"]

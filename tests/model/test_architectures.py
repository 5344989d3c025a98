"""Any decoder in transformers, exactly: tiny random models of every architecture in ``_tiny_archs``.

For each architecture, against the model's *own* eager attention (never against the
workbench's kernels):
  * discovery finds its structure with no table row (``lens.model._arch`` holds no row for it);
  * routed logits equal stock logits (fp32 atol 1e-4), in a padded batch;
  * every statistic of ``lens.capture`` (eager and chunked backends) equals the same
    statistic computed here, from its definition, from the model's own
    ``output_attentions`` pattern (atol 1e-5); gpt-oss' ``learned_sink_mass`` is
    ``1 - sum_j p`` of that pattern (its eager attention drops the sink column);
  * a head ablation and a ZeroTuning key scaling equal brute-force re-runs of the stock
    model: a hook zeroing the head's slice of the output projection's input, and the
    model's own softmax with column 0 scaled and the row renormalised;
  * activation patching of one head equals a brute-force re-run with that slice replaced;
  * the TransformerLens bridge and nnsight load and reproduce the logits; the only skips
    are the known gaps listed with the library's reason in ``tests/skips.py``.
Inputs are longer than the models' sliding windows, so local layers really cut.
Outcomes are written to ``$LENS_ARCH_REPORT`` (JSON) when set: ``docs/arch_table.py``
turns them into the README's architecture table.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os

import pytest
import torch

if not torch.cuda.is_available():  # the Triton backend runs under its interpreter on a CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

from _docs import census_module  # noqa: E402
from _tiny_archs import ARCHS, WINDOW, build  # noqa: E402
from skips import known_gap  # noqa: E402

import lens  # noqa: E402
from lens.model import _routing  # noqa: E402
from lens.edits import AblateHead, ScaleAttention  # noqa: E402

NAMES = list(ARCHS)
LENGTHS = (13, 9)  # a padded batch; both longer than WINDOW
LAYER, HEAD = 1, 2  # the edited / patched head
ATOL = 1e-5

_report: dict[str, dict[str, str]] = {}


def _note(arch: str, column: str, outcome: str) -> None:
    """Keep the worst outcome per (arch, column): one failing test fails the cell."""
    cells = _report.setdefault(arch, {})
    rank = {"pass": 0, "skip": 1, "fail": 2}
    old = cells.get(column)
    if old is None or rank[outcome.split(":")[0]] >= rank[old.split(":")[0]]:
        cells[column] = outcome
    path = os.environ.get("LENS_ARCH_REPORT")
    if path:
        features = {}
        for a in _report:
            arch_ = subject(a).arch
            layout = {"pre-norm": [], "other": ["residual not a plain sum"]}.get(arch_.residual,
                                                                                [f"{arch_.residual} blocks"])
            declared = [f for f in ARCHS[a].features if not any(w in f for w in ("sliding", "local", "soft", "sinks"))]
            features[a] = arch_.features() + layout + declared
        with open(path, "w") as f:
            json.dump({"results": _report, "features": features}, f, indent=1, sort_keys=True)


@contextlib.contextmanager
def noted(arch: str, column: str):
    """Record the test's outcome for the README table: pass, fail, or the skip reason."""
    try:
        yield
    except pytest.skip.Exception as e:
        _note(arch, column, f"skip: {e.msg}")
        raise
    except BaseException:
        _note(arch, column, "fail")
        raise
    _note(arch, column, "pass")


@functools.cache
def tokenizer():
    """The organisms' tokenizer, saved and loaded back (TransformerLens reads its init kwargs)."""
    import tempfile

    from transformers import PreTrainedTokenizerFast

    from lens.model.organisms import make_tokenizer

    folder = tempfile.mkdtemp(prefix="lens-tiny-tokenizer-")  # kept: TransformerLens reloads it by path
    make_tokenizer().save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


@functools.cache
def subject(arch: str):
    return lens.Subject(build(arch), tokenizer(), name=f"tiny-{arch}")


def inputs() -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Rows with repeats (so token-pattern statistics are not all 0), ids padded with 65, the padding mask:
    the census' own inputs (``docs/census.py``), so the two check the same thing."""
    return census_module().inputs(65)


def stock_logits(s, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return s.model(input_ids=ids, attention_mask=mask).logits


def assert_real_close(got, want, mask, atol=1e-4):
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=atol, rtol=0)


# --- discovery and logits ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", NAMES)
def test_structure_is_discovered_and_routed_logits_equal_stock(arch):
    with noted(arch, "capture"):
        s = subject(arch)
        assert arch not in lens.model._arch.OVERRIDES
        assert s.model.config._attn_implementation == "eager"
        assert (s.n_layers, s.n_heads, s.d_head) == (s.model.config.num_hidden_layers, 4, 12)
        assert s.arch.hybrid == ("hybrid" in " ".join(ARCHS[arch].features))
        windowed = any("sliding" in f or "local" in f for f in ARCHS[arch].features)
        assert (WINDOW in s.arch.sliding_window) == windowed  # found in the traced pass, per layer
        _, ids, mask = inputs()
        want = stock_logits(s, ids, mask)
        with torch.no_grad(), _routing.routed(s.model):
            got = s.model(input_ids=ids, attention_mask=mask).logits
        assert_real_close(got, want, mask)
        assert s.model.config._attn_implementation == "eager"  # restored


# --- statistics against the model's own eager pattern ----------------------------------------
def reference_stats(s, rows, ids, mask) -> dict[str, torch.Tensor]:
    """Every statistic, [b, layer, head, ...], from the model's own ``output_attentions``, by its
    definition (``docs/census.py``'s ``reference_stats``). Which keys a query sees comes from the
    causal window the structure reports, not from the pattern, so a wrong window shows."""
    with torch.no_grad():
        out = s.model(input_ids=ids, attention_mask=mask, output_attentions=True)
    n = ids.shape[1]
    qpos = torch.arange(n)[:, None]
    kpos = torch.arange(n)[None, :]
    seen = []
    for layer, p in enumerate(out.attentions):
        window = s.arch.sliding_window[layer]
        sees = (kpos <= qpos) & (qpos - kpos < window if window else True)
        seen.append(sees.expand_as(p).float())
    return census_module().reference_stats(out.attentions, ids, mask, seen=seen)


@pytest.mark.parametrize("backend", ["eager", "chunked"])
@pytest.mark.parametrize("arch", NAMES)
def test_every_statistic_equals_the_models_own_eager_pattern(arch, backend):
    with noted(arch, "capture"):
        s = subject(arch)
        rows, ids, mask = inputs()
        cap = lens.capture(s, rows, backend=backend, resid_norm=False, massive=False, value_norm=False)
        ref = reference_stats(s, rows, ids, mask)
        names = [n for n in ref if n in cap.stats]
        assert ("learned_sink_mass" in cap.stats) == s.arch.has_learned_sinks
        if s.arch.has_learned_sinks:
            assert cap.stats["learned_sink_mass"].max() > 0.3  # the sinks matter in this model
        for name in names:
            got = cap.stats[name]
            if name == "visible":
                got = got[:, :, None].expand_as(ref[name])
            torch.testing.assert_close(got, ref[name], atol=ATOL, rtol=1e-5,
                                       msg=lambda m, name=name: f"{arch} {backend} {name}: {m}")
        # top-k indices point at the probabilities reported (ties may order differently)
        assert len(names) >= 14


@pytest.mark.triton
@pytest.mark.parametrize("arch", ["gemma2", "gpt_oss", "deepseek_v3"])
def test_triton_backend_equals_the_models_own_eager_pattern(arch):
    """Soft-capping, learned sinks, windows and value heads wider than the keys' through the Triton
    kernels (interpreted on a CPU, ~50 s an architecture): gemma2 has local/global windows and the
    cap, gpt_oss sinks and windows, deepseek_v3 d_v != d_head. (Mistral's uniform window, which
    gemma2's local layers cover, was a fourth case.)"""
    s = subject(arch)
    rows, ids, mask = inputs()
    cap = lens.capture(s, rows, backend="triton", resid_norm=False, massive=False, value_norm=False)
    ref = reference_stats(s, rows, ids, mask)
    for name in ("sink_mass", "entropy", "received", "distance", "waad", "induction", "learned_sink_mass"):
        if name in cap.stats:
            torch.testing.assert_close(cap.stats[name], ref[name], atol=1e-4, rtol=1e-5,
                                       msg=lambda m, name=name: f"{arch} triton {name}: {m}")


# --- edits and patching against brute-force re-runs of the stock model ------------------------
@contextlib.contextmanager
def slice_replaced(s, layer: int, head: int, values: torch.Tensor | None):
    """Stock model, with head ``head``'s slice (d_v wide) of the heads' outputs of layer ``layer`` set to
    ``values`` (0 if None): the o_proj input, or the input of the norm before it (BitNet)."""
    d = s.d_v

    def pre(module, args):
        z = args[0].clone()
        z[..., head * d:(head + 1) * d] = 0.0 if values is None else values
        return (z, *args[1:])

    handle = s.head_site(layer).register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def softmax_column_scaled(s, layer: int, head: int, factor: float):
    """The model's own eager softmax in ``layer``, with head ``head``'s key-0 column times ``factor``, renormalised."""
    original = torch.nn.functional.softmax
    state = {"on": False}

    def patched(x, *args, **kwargs):
        p = original(x, *args, **kwargs)
        if not state["on"] or p.ndim != 4:
            return p
        p = p.clone()
        p[:, head, :, 0] *= factor
        return p / p.sum(-1, keepdim=True)

    attn = s.attn_module(layer)
    handles = [attn.register_forward_pre_hook(lambda *a: state.update(on=True)),
               attn.register_forward_hook(lambda *a: state.update(on=False))]
    torch.nn.functional.softmax = patched
    try:
        yield
    finally:
        torch.nn.functional.softmax = original
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch", NAMES)
def test_head_ablation_and_key_scaling_equal_brute_force(arch):
    with noted(arch, "edits"):
        s = subject(arch)
        _, ids, mask = inputs()
        plain = stock_logits(s, ids, mask)
        with torch.no_grad(), s.edited(AblateHead(layer=LAYER, head=HEAD)):
            ablated = s.model(input_ids=ids, attention_mask=mask).logits
        with slice_replaced(s, LAYER, HEAD, None):
            brute = stock_logits(s, ids, mask)
        assert_real_close(ablated, brute, mask)
        assert (ablated - plain)[mask.bool()].abs().max() > 1e-3  # the edit did something

        with torch.no_grad(), s.edited(ScaleAttention(layer=LAYER, head=HEAD, keys=0, factor=0.3)):
            scaled = s.model(input_ids=ids, attention_mask=mask).logits
        with softmax_column_scaled(s, LAYER, HEAD, 0.3):
            brute = stock_logits(s, ids, mask)
        assert_real_close(scaled, brute, mask)
        assert (scaled - plain)[mask.bool()].abs().max() > 1e-4


@pytest.mark.parametrize("arch", NAMES)
def test_head_patching_equals_brute_force(arch):
    from lens import circuits
    with noted(arch, "patching"):
        s = subject(arch)
        _, ids, mask = inputs()
        values = torch.randn(*ids.shape, s.d_v, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got = circuits.run_with_head_outputs(s, ids, {(LAYER, HEAD): values}, lengths=mask.sum(1))
        with slice_replaced(s, LAYER, HEAD, values):
            want = stock_logits(s, ids, mask)
        assert_real_close(got, want, mask)


# --- the TransformerLens and nnsight views -----------------------------------------------------
@pytest.mark.parametrize("arch", NAMES)
def test_transformer_lens_bridge(arch):
    with noted(arch, "TL bridge"):
        known_gap("TL bridge", arch)
        s = subject(arch)
        bridge = s.bridge
        _, ids, mask = inputs()
        with torch.no_grad():
            got = bridge(ids[:1, :LENGTHS[1]])
        got = got if isinstance(got, torch.Tensor) else got.logits
        torch.testing.assert_close(got, stock_logits(s, ids[:1, :LENGTHS[1]], mask[:1, :LENGTHS[1]]),
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", NAMES)
def test_nnsight_view(arch):
    with noted(arch, "nnsight"):
        known_gap("nnsight", arch)
        s = subject(arch)
        _, ids, mask = inputs()
        model = s.nnsight
        with torch.no_grad(), model.trace(ids[:1]):
            logits = model.output.logits.save()
        torch.testing.assert_close(getattr(logits, "value", logits), stock_logits(s, ids[:1], mask[:1]),
                                   atol=1e-4, rtol=0)


# --- nothing dropped silently ------------------------------------------------------------------
def _q(s, n=5):
    q = torch.randn(1, s.n_heads, n, s.d_head)
    kv = torch.randn(1, s.n_kv_heads, n, s.d_head)
    return q, kv, kv.clone()


def test_unknown_attention_keyword_is_refused_by_name():
    s = subject("llama")
    q, k, v = _q(s)
    with _routing.routed(s.model), \
            pytest.raises(_routing.UnsupportedAttention, match=r"'made_up_option' = 3\.0 .*\(llama, layer 1, LlamaAttention\)"):
        _routing.lens_attention_forward(s.attn_module(1), q, k, v, None, scaling=0.3, made_up_option=3.0)


def test_keywords_that_cannot_be_honoured_are_refused():
    s = subject("gemma2")
    q, k, v = _q(s)
    attn = s.attn_module(0)
    with _routing.routed(s.model):  # the keywords are checked for the routed model's own forwards
        with pytest.raises(_routing.UnsupportedAttention, match="'head_mask'.*gemma2, layer 0"):
            _routing.lens_attention_forward(attn, q, k, v, None, head_mask=torch.ones(4))
        with pytest.raises(_routing.UnsupportedAttention, match="'output_attentions'"):
            _routing.lens_attention_forward(attn, q, k, v, None, output_attentions=True)
        attn.train()
        try:
            with pytest.raises(_routing.UnsupportedAttention, match="'dropout' = 0.1 in train mode"):
                _routing.lens_attention_forward(attn, q, k, v, None, dropout=0.1)
        finally:
            attn.eval()
        with pytest.raises(_routing.UnsupportedAttention, match="'softcap'"):
            _routing.lens_attention_forward(attn, q, k, v, None, softcap=-1.0)


def test_gemma2_soft_capping_is_honoured_on_every_path():
    """Every path that reaches the hook: capture on each CPU backend, an edit-only pass (the
    no-statistics fast path must not drop the cap), a row edit (eager pattern), and patching."""
    s = subject("gemma2")
    assert set(s.arch.softcap) == {2.0}
    rows, ids, mask = inputs()
    ref = reference_stats(s, rows, ids, mask)
    for backend in ("eager", "chunked", "auto"):
        cap = lens.capture(s, rows, stats=["entropy", "sink_mass"], backend=backend, resid_norm=False,
                           massive=False, value_norm=False)
        torch.testing.assert_close(cap.stats["entropy"], ref["entropy"], atol=ATOL, rtol=0)
    # without the cap the same model attends differently: the test above is not vacuous
    from lens.kernels import attention

    q, k, v = _q(s, 7)
    capped = attention(8 * q, k, v, softcap=2.0, stats=("entropy",), backend="eager").stats["entropy"]
    free = attention(8 * q, k, v, stats=("entropy",), backend="eager").stats["entropy"]
    assert (capped - free).abs().max() > 0.1
    for backend in ("auto", "chunked", "eager"):  # edits without statistics: fast path or not
        with torch.no_grad(), s.edited(ScaleAttention(layer=LAYER, head=HEAD, keys=0, factor=0.3), backend=backend):
            got = s.model(input_ids=ids, attention_mask=mask).logits
        with softmax_column_scaled(s, LAYER, HEAD, 0.3):
            assert_real_close(got, stock_logits(s, ids, mask), mask)


def test_gpt_oss_sink_heads_are_found_from_learned_sinks():
    """A head that parks its attention on its learned sink is a sink head (METHODS sec 1)."""
    s = subject("gpt_oss")
    rows, _, _ = inputs()
    cap = lens.capture(s, rows)
    sinks = lens.analyze(cap)["sinks"].frame
    learned = cap.stats["learned_sink_mass"]
    real = torch.arange(learned.shape[-1])[None, :] < cap.lengths[:, None]  # [b, pos]
    busiest = (learned * real[:, None, None]).sum(dim=(0, 3)) / real.sum()  # mean over real queries, [layer, head]
    top = tuple(int(i) for i in divmod(int(busiest.argmax()), s.n_heads))
    row = sinks[(sinks["layer"] == top[0]) & (sinks["head"] == top[1])].iloc[0]
    assert row["learned_sink_mass"] == pytest.approx(float(busiest[top]), abs=1e-5)
    assert bool(row["sink_head"])


def test_structure_error_names_what_is_missing():
    from lens.model._structure import StructureError, discover

    class NoAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "toy", "_attn_implementation": "eager"})()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10)

        def get_output_embeddings(self):
            return self.head

        def get_input_embeddings(self):
            return self.emb

        def forward(self, input_ids, **kw):
            return self.head(self.emb(input_ids))

    with pytest.raises(StructureError, match="toy: no attention module called the attention interface"):
        discover(NoAttention())


def test_load_takes_paths_dtype_and_device_map(tmp_path, monkeypatch):
    """``lens.load`` on a saved model directory given as a Path, with dtype and device_map
    (handed to transformers, which places the modules; on this CPU-only machine, all on the CPU)."""
    from transformers import AutoModelForCausalLM

    model = build("qwen3")
    model.save_pretrained(tmp_path / "tiny-qwen3")
    tokenizer().save_pretrained(tmp_path / "tiny-qwen3")
    seen = {}
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    s = lens.load(tmp_path / "tiny-qwen3", dtype=torch.float64, device_map="auto")
    assert seen["device_map"] == "auto" and seen["dtype"] == torch.float64
    assert s.model.dtype == torch.float64 and s.device.type == "cpu"
    assert s.arch.model_type == "qwen3" and s.name == "tiny-qwen3"
    rows, ids, mask = inputs()
    cap = lens.capture(s, rows, stats=["sink_mass"], resid_norm=False, massive=False)
    assert cap.stats["sink_mass"].dtype == torch.float32 and cap.stats["sink_mass"].shape == (2, 3, 4, 13)
    with pytest.raises(ValueError, match="not both"):
        lens.load(tmp_path / "tiny-qwen3", device="cpu", device_map="cpu")
    with pytest.raises(ValueError, match="floating torch.dtype"):
        lens.load(tmp_path / "tiny-qwen3", dtype=torch.int64)
    assert math.isfinite(float(cap.stats["sink_mass"].sum()))


def test_cli_info_prints_the_discovered_structure(tmp_path):
    from typer.testing import CliRunner

    from lens.cli import app

    build("gemma2").save_pretrained(tmp_path / "g2")
    tokenizer().save_pretrained(tmp_path / "g2")
    result = CliRunner().invoke(app, ["info", "--model", str(tmp_path / "g2")])
    assert result.exit_code == 0, result.output
    assert "attention: local/global (2 of 3 local) 5, soft-capping 2, GQA" in result.output
    assert "structure: blocks model.layers, attention .self_attn -> .o_proj" in result.output
    assert "post-norm blocks" in result.output

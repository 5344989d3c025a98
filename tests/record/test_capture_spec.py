"""CaptureSpec: what a capture records, as one frozen value checked once; capture(spec) == capture(**keywords)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import lens
from lens import CaptureSpec
from lens.edits import AblateHead, ScaleAttention
from lens.kernels import DEFAULT_STATS, StatOptions

TEXTS = ["w5 w6 w7 w8 w9 w5 w6 w7 w8", "w11 w12 w13 w11", "w20 w21 w22 w23 w24 w25 w26 w27 w28 w29 w30 w31 w32"]

# (field, value, the error's type, a pattern its message must match): each refused when the spec is made,
# with no model, by a message that starts with the field's name.
BAD_FIELDS = [
    ("stats", ["sink_mass", "vibes"], ValueError, r"^stats: unknown statistic\(s\) \['vibes'\]; valid: \[.*'entropy'"),
    ("stats", ["pattern"], ValueError, r"^stats: unknown statistic\(s\) \['pattern'\].*patterns=\[\(layer, head\)"),
    ("backend", "gpu", ValueError, r"^backend: must be one of eager, chunked, triton, auto, got 'gpu'"),
    ("batch_size", 0, ValueError, r"^batch_size: must be a positive int, got 0"),
    ("batch_size", 2.5, ValueError, r"^batch_size: must be a positive int, got 2.5"),
    ("patterns", [3], ValueError, r"^patterns: 3 is not a \(layer, head\) pair"),
    ("patterns", "some", ValueError, r"^patterns: 'some' is not 'all'"),
    ("pattern_window", (5, 2), ValueError, r"^pattern_window: .*0 <= start < stop, got \(5, 2\)"),
    ("pattern_window", (1,), ValueError, r"^pattern_window: must be \(start, stop\) query rows"),
    ("resid_layers", [-1], ValueError, r"^resid_layers: layer -1 is not a block number"),
    ("resid_layers", ["0"], ValueError, r"^resid_layers: layer '0' is not a block number"),
    ("edits", [(0, 1)], TypeError, r"^edits: not an edit: \(0, 1\); pass lens\.edits objects"),
    ("massive", "yes", ValueError, r"^massive: must be True or False, got 'yes'"),
    ("value_norm", 1, ValueError, r"^value_norm: must be True or False or None, got 1"),
    ("options", {"topk": 3}, ValueError, r"^options: must be a lens\.kernels\.StatOptions, got dict"),
]


@pytest.mark.parametrize("field,value,error,message", BAD_FIELDS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_FIELDS)])
def test_a_bad_field_is_refused_by_name_when_the_spec_is_made(field, value, error, message):
    with pytest.raises(error, match=message):
        CaptureSpec(**{field: value})


@pytest.mark.parametrize("kw,message", [
    (dict(resid_layers=[3]), r"^resid_layers: layer 3 does not exist in tiny-llama: layers are 0\.\.2"),
    (dict(patterns=[(0, 6)]), r"^patterns: head \(0, 6\) does not exist in tiny-llama"),
    (dict(patterns=[(3, 0)]), r"^patterns: head \(3, 0\) does not exist in tiny-llama"),
    (dict(edits=[AblateHead(layer=0, head=6)]), r"^edits: tiny-llama \(3 layers x 6 heads\): AblateHead"),
    (dict(edits=[ScaleAttention(layer=4, factor=2.0)]), r"^edits: tiny-llama .*layer 4 does not exist"),
])
def test_a_layer_or_head_the_model_lacks_is_refused_by_field(tiny_llama, kw, message):
    spec = CaptureSpec(**kw)  # fine without a model
    with pytest.raises(ValueError, match=message):
        spec.for_subject(tiny_llama)
    with pytest.raises(ValueError, match=message):
        lens.capture(tiny_llama, TEXTS[0], **kw)


def test_an_unknown_keyword_is_refused_by_name(tiny_llama):
    with pytest.raises(TypeError, match=r"unknown capture option\(s\) \['stat'\]: the options are .*stats"):
        lens.capture(tiny_llama, TEXTS[0], stat=["entropy"])
    with pytest.raises(TypeError, match=r"spec: must be a lens\.CaptureSpec, got dict"):
        lens.capture(tiny_llama, TEXTS[0], {"stats": ["entropy"]})


def test_fields_are_normalised_and_the_spec_is_frozen_picklable_and_json():
    spec = CaptureSpec(stats="entropy", patterns=[[1, 2], (0, 5)], resid_layers=[2, 0], edits=AblateHead(layer=0, head=1),
                       pattern_window=[1, 4], options=StatOptions(topk=3))
    assert spec.stats == ("entropy",) and spec.patterns == ((1, 2), (0, 5)) and spec.resid_layers == (2, 0)
    assert spec.edits == (AblateHead(layer=0, head=1),)
    assert spec.pattern_window == (1, 4) == spec.options.pattern_window and spec.options.topk == 3
    assert CaptureSpec(options=StatOptions(pattern_window=(2, 3))).pattern_window == (2, 3)
    assert CaptureSpec(stats=["entropy", "entropy", "sink_mass"]).stats == ("entropy", "sink_mass")
    with pytest.raises(AttributeError):
        spec.backend = "eager"
    assert pickle.loads(pickle.dumps(spec)) == spec  # the Ray executor ships it inside each job
    assert json.loads(json.dumps(spec.to_dict()))["edits"] == ["AblateHead(layer=0, head=1, mean=None)"]
    assert CaptureSpec.of(spec, backend="eager") == CaptureSpec(**{**vars(spec), "backend": "eager"})
    assert CaptureSpec.of(spec) is spec


def test_for_subject_resolves_default_all_and_value_norm(tiny_llama):
    spec = CaptureSpec(patterns="all").for_subject(tiny_llama)
    assert spec.resolved and not CaptureSpec().resolved
    assert spec.stats == DEFAULT_STATS  # no learned sinks in a Llama
    assert spec.patterns == tuple((l, h) for l in range(3) for h in range(6))
    assert spec.value_norm is True  # nothing between the heads and the output projection
    assert spec.for_subject(tiny_llama) == spec


def _same_capture(a: lens.Capture, b: lens.Capture) -> None:
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths) and a.str_tokens == b.str_tokens
    assert list(a.stats) == list(b.stats)
    for name in a.stats:
        assert torch.equal(a.stats[name], b.stats[name]), name
    assert a.patterns.keys() == b.patterns.keys() and a.resid.keys() == b.resid.keys()
    for k in a.patterns:
        assert torch.equal(a.patterns[k], b.patterns[k]), k
    for k in a.resid:
        assert torch.equal(a.resid[k], b.resid[k]), k
    assert torch.equal(a.logits, b.logits)
    skip = {"seconds"}
    assert {k: v for k, v in a.meta.items() if k not in skip} == {k: v for k, v in b.meta.items() if k not in skip}


def test_capture_with_a_spec_equals_capture_with_keywords(tiny_llama):
    kw = dict(stats=["sink_mass", "entropy", "topk_idx", "pooled", "induction"], patterns=[(1, 2), (0, 5)],
              pattern_window=(2, 7), resid_layers=[0, 2], edits=[ScaleAttention(layer=1, head=3, keys=0, factor=0.5)],
              backend="chunked", batch_size=2, options=StatOptions(topk=3, pool_max=4))
    by_keywords = lens.capture(tiny_llama, TEXTS, progress=False, **kw)
    spec = CaptureSpec(**kw)
    _same_capture(lens.capture(tiny_llama, TEXTS, spec, progress=False), by_keywords)
    _same_capture(lens.capture(tiny_llama, TEXTS, spec=spec, progress=False), by_keywords)
    # A keyword given with a spec replaces that field.
    eager = lens.capture(tiny_llama, TEXTS, spec, backend="eager", progress=False)
    assert eager.meta["backend"] == "eager" and eager.stats.keys() == by_keywords.stats.keys()
    assert by_keywords.stats["pool_factor"].shape == (3, 3)  # one per input and layer, with 'pooled' only
    n = by_keywords.tokens.shape[1]
    assert by_keywords.patterns[(1, 2)].shape == (3, 5, n)  # rows 2..6 of the window, every key


def test_saved_capture_shapes_follow_the_registry(tiny_llama, tmp_path):
    """Every statistic of a capture has the axes the registry gives it, with the capture's sizes."""
    from lens.record import CAPTURE_STATS

    cap = lens.capture(tiny_llama, TEXTS, stats="default", batch_size=2, options=StatOptions(topk=3, pool_max=4))
    b, n = len(TEXTS), cap.tokens.shape[1]
    sizes = {"batch": b, "layer": 3, "block": 3, "head": 6, "query_pos": n, "key_pos": n, "pos": n, "topk": 3,
             "pool_q": 4, "pool_k": 4, "top3": 3}
    assert set(cap.stats) == set(DEFAULT_STATS) | {"value_norm", "resid_norm", "massive_val", "massive_pos",
                                                    "massive_dim", "massive_median", "pool_factor"}
    for name, t in cap.stats.items():
        stat = CAPTURE_STATS[name]
        assert tuple(t.shape) == tuple(sizes[a] for a in stat.axes.split()), name
        assert t.dtype == stat.dtype, name
        padded = cap.lengths[1].item()  # input 1 is the shortest: its padded queries hold the fill
        if stat.position_dims and stat.position_dims[0] == 3 and stat.kind in ("row", "topk"):
            assert (t[1, :, :, padded:] == stat.fill).all(), name
    back = lens.Capture.load(cap.save(tmp_path / "cap"))
    assert back.stats.keys() == cap.stats.keys()

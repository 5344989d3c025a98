"""The census (``docs/census.py``): every causal-LM model type of the installed transformers.

Each ``model_type`` in ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` is built as a tiny random model
from its config class's defaults, shrunk generically, and checked against its own eager
attention (``lens.capture`` statistics, eager and chunked backends, atol 1e-5; routed logits
atol 1e-4). Every outcome must be ``exact``, a refusal that names its reason, or ``not built``
here (a default config that transformers cannot build, a model needing inputs or packages this
machine lacks); never ``wrong`` and never a raw exception out of the workbench (``crash``).

The full census runs here, over every model type: about 12-15 s on two CPU cores with
transformers 5.25 (200 model types, one torch thread). ``python docs/census.py`` prints the
same table; ``--write-readme`` puts it into the README.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from _docs import census_module

pytestmark = pytest.mark.census

ROOT = Path(__file__).resolve().parents[2]


census = census_module


@functools.cache
def report() -> dict:
    return census().run(progress=False)


def _listing(results: dict, outcome: str) -> str:
    return "\n".join(f"  {t}: {r['detail']}" for t, r in sorted(results.items()) if r["outcome"] == outcome)


def test_census_covers_every_causal_lm_model_type():
    results = report()["results"]
    assert set(results) == set(census().model_types())
    assert all(r["outcome"] in census().OUTCOMES for r in results.values())


def test_census_has_no_crash():
    results = report()["results"]
    assert not _listing(results, "crash"), "raw exceptions out of the workbench:\n" + _listing(results, "crash")


def test_census_has_nothing_wrong():
    results = report()["results"]
    assert not _listing(results, "wrong"), "statistics that differ from the model's own attention:\n" + _listing(
        results, "wrong")


def test_every_refusal_and_every_failed_build_names_its_reason():
    results = report()["results"]
    unexplained = [t for t, r in results.items() if r["outcome"] in ("refused", "not built") and not r["detail"].strip()]
    assert not unexplained


def test_the_architectures_tested_in_depth_are_exact_in_the_census():
    """The census is not vacuous: the architectures of ``tests/model/test_architectures.py`` are found
    exact from their defaults too."""
    from _tiny_archs import ARCHS

    results = report()["results"]
    missed = {t: results[t] for t in ARCHS if t in results and results[t]["outcome"] != "exact"}
    assert not missed


def test_layer_plan_keeps_every_kind_of_layer_and_rewrites_per_layer_attributes():
    """The generic shrink of per-layer attributes, on a made-up hybrid config of 12 layers."""
    attrs = {
        "layer_types": ["linear", "linear", "linear", "full"] * 3,  # a hybrid pattern
        "kv_source_layers": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3],  # the last layer reads layer 3's K/V
        "moe_layers": [4, 5, 6, 7, 8, 9, 10, 11],  # a list of layer indices
        "first_k_dense_replace": 4,  # leading dense layers
    }
    keep, new = census()._layer_plan(attrs, 12)
    assert 3 <= len(keep) <= census().MAX_LAYERS
    assert set(new["layer_types"]) == {"linear", "full"}
    types = new["layer_types"]
    assert all(len(v) == len(keep) for k, v in new.items() if k in ("layer_types", "kv_source_layers"))
    assert all(types[src] == types[j] or src == j for j, src in enumerate(new["kv_source_layers"]))
    assert any(src != j for j, src in enumerate(new["kv_source_layers"]))  # sharing survives
    assert 0 < new["first_k_dense_replace"] < len(keep)
    assert new["moe_layers"] == [j for j, i in enumerate(keep) if i >= 4]

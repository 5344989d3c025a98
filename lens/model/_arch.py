"""Per-architecture overrides: the few facts that cannot be discovered from the model.

Structure (blocks, attention, output projection, MLP, final norm, head shapes, attention
features per layer) is discovered by ``lens.model._structure.discover`` from the module tree and
one traced pass, for any transformers decoder. This file holds only what discovery cannot
know: corrections for a model type where discovery would be wrong, and the names
TransformerLens' adapter factory uses where they differ from the transformers class name.
Both are empty today: every architecture tested (see the README's architecture table) is
found as it is.
"""

from __future__ import annotations

#: model_type -> ``Structure`` fields to replace after discovery (for example ``{"mlp": None}``).
OVERRIDES: dict[str, dict] = {}

#: transformers class name -> the architecture name TransformerLens' bridge knows it by,
#: where the two differ (by default the class name, e.g. "LlamaForCausalLM").
TL_ARCHITECTURES: dict[str, str] = {}


def overrides_for(model_type: str) -> dict:
    return dict(OVERRIDES.get(model_type, {}))


def tl_architecture(class_name: str) -> str:
    return TL_ARCHITECTURES.get(class_name, class_name)

"""The heavy libraries the model layer uses, imported on first use: the one place they are named.

``import lens`` must not pay for them, and a session that only reads saved captures never
needs them. Measured with ``python -c "import lens; ..."`` on the 2-core CPU machine
(2026-12): ``import transformers`` ~0.8 s, ``transformers.pytorch_utils`` ~1.5 s,
``huggingface_hub``'s download functions ~0.75 s, TransformerLens and nnsight seconds; all of
``import lens`` ~2.9 s. ``_lazy.GPT2Config`` imports its module on first access and looks the
name up on every access, as a function-local import would, so a patched library is seen.
"""

from __future__ import annotations

import importlib

#: name -> the module it is imported from
SOURCES = {
    "AutoModelForCausalLM": "transformers",
    "AutoTokenizer": "transformers",
    "GPT2Config": "transformers",
    "GPT2LMHeadModel": "transformers",
    "PreTrainedTokenizerFast": "transformers",
    "Conv1D": "transformers.pytorch_utils",
    "ALL_ATTENTION_FUNCTIONS": "transformers.modeling_utils",
    "ALL_MASK_ATTENTION_FUNCTIONS": "transformers.masking_utils",
    "sdpa_mask": "transformers.masking_utils",
    "hf_hub_download": "huggingface_hub",
    "try_to_load_from_cache": "huggingface_hub",
    "build_bridge_from_module": "transformer_lens.model_bridge.sources._bridge_builder",
    "TransformersModel": "nnsight",
}


def __getattr__(name: str):
    if name not in SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(SOURCES[name]), name)

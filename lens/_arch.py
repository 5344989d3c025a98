"""Per-architecture facts, as data: where the blocks, attention and output projection live.

Everything that differs between transformers architectures and that capture, edits or
patching need is written here once, one row per ``config.model_type``. Adding an
architecture means adding a row, not branches elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """Where things live in one transformers architecture.

    layers: dotted path from the CausalLM to the ModuleList of decoder blocks.
    attn: attribute of a block holding its self-attention module.
    mlp: attribute of a block holding its MLP (None for attention-only models).
    o_proj: attribute of the attention module holding the output projection.
    o_proj_conv1d: True for GPT-2's Conv1D (weight is [d_in, d_out]), False for nn.Linear.
    final_norm: dotted path from the CausalLM to the norm before the unembedding.
    tl_architecture: the name TransformerLens' adapter factory knows it by.
    """

    layers: str
    attn: str
    mlp: str | None
    o_proj: str
    o_proj_conv1d: bool
    final_norm: str
    tl_architecture: str


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("model.layers", "self_attn", "mlp", "o_proj", False, "model.norm", "LlamaForCausalLM"),
    "qwen2": ArchSpec("model.layers", "self_attn", "mlp", "o_proj", False, "model.norm", "Qwen2ForCausalLM"),
    "mistral": ArchSpec("model.layers", "self_attn", "mlp", "o_proj", False, "model.norm", "MistralForCausalLM"),
    "gemma": ArchSpec("model.layers", "self_attn", "mlp", "o_proj", False, "model.norm", "GemmaForCausalLM"),
    "gemma2": ArchSpec("model.layers", "self_attn", "mlp", "o_proj", False, "model.norm", "Gemma2ForCausalLM"),
    "gpt2": ArchSpec("transformer.h", "attn", "mlp", "c_proj", True, "transformer.ln_f", "GPT2LMHeadModel"),
}


def arch_for(model_type: str) -> ArchSpec:
    try:
        return ARCHS[model_type]
    except KeyError:
        raise ValueError(
            f"architecture {model_type!r} is not described in lens/_arch.py; known: {sorted(ARCHS)}. "
            "Add a row there (where its blocks, attention and output projection live)."
        ) from None


def get_path(root, dotted: str):
    """Follow a dotted attribute path from ``root``."""
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj

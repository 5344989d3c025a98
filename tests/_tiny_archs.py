"""Tiny random decoder models of many transformers architectures, built in code (no download).

Each entry builds a 3-layer model from its architecture's own config class with small,
distinct sizes (4 query heads over 2 key/value heads of width 12 where the architecture
allows grouped-query attention) and a fixed seed. Features that the workbench must honour
are switched on where the architecture has them: sliding windows shorter than the test
inputs, alternating local/global layers, soft-capping with logits large enough to be
capped, learned sink logits, qk-norm, partial rotary, parallel attention/MLP blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

VOCAB = 70  # >= the organisms' tokenizer (64 words + specials)
WINDOW = 5  # sliding windows in these models: shorter than every test input


@dataclass(frozen=True)
class TinyArch:
    """One architecture: its model_type, how to build its config, what it exercises."""

    model_type: str
    make_config: Callable[[], object]
    features: tuple[str, ...] = ()


def _common(**kw) -> dict:
    base = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                pad_token_id=65, bos_token_id=64, eos_token_id=66, tie_word_embeddings=False)
    base.update(kw)
    return base


def _cfg(cls_name: str, **kw):
    import transformers

    return getattr(transformers, cls_name)(**_common(**kw))


def _archs() -> list[TinyArch]:
    layers3 = ["sliding_attention", "full_attention", "sliding_attention"]
    return [
        TinyArch("llama", lambda: _cfg("LlamaConfig", head_dim=12)),
        TinyArch("mistral", lambda: _cfg("MistralConfig", head_dim=12, sliding_window=WINDOW), ("sliding window",)),
        TinyArch("mixtral", lambda: _cfg("MixtralConfig", head_dim=12, sliding_window=WINDOW, num_local_experts=3,
                                         num_experts_per_tok=2), ("sliding window", "MoE")),
        TinyArch("qwen2", lambda: _cfg("Qwen2Config", use_sliding_window=True, sliding_window=WINDOW,
                                       max_window_layers=1, layer_types=None), ("sliding window (some layers)",)),
        TinyArch("qwen2_moe", lambda: _cfg("Qwen2MoeConfig", num_experts=3, num_experts_per_tok=2,
                                           moe_intermediate_size=20, shared_expert_intermediate_size=24), ("MoE",)),
        TinyArch("qwen3", lambda: _cfg("Qwen3Config", head_dim=12), ("qk-norm",)),
        TinyArch("qwen3_moe", lambda: _cfg("Qwen3MoeConfig", head_dim=12, num_experts=3, num_experts_per_tok=2,
                                           moe_intermediate_size=20), ("qk-norm", "MoE")),
        TinyArch("gemma", lambda: _cfg("GemmaConfig", head_dim=12)),
        TinyArch("gemma2", lambda: _cfg("Gemma2Config", head_dim=12, sliding_window=WINDOW, layer_types=layers3,
                                        attn_logit_softcapping=2.0, final_logit_softcapping=30.0,
                                        query_pre_attn_scalar=12),
                 ("soft-capping", "alternating local/global")),
        TinyArch("gemma3_text", lambda: _cfg("Gemma3TextConfig", head_dim=12, sliding_window=WINDOW,
                                             layer_types=layers3, query_pre_attn_scalar=12),
                 ("qk-norm", "alternating local/global")),
        TinyArch("phi3", lambda: _cfg("Phi3Config", sliding_window=WINDOW, partial_rotary_factor=0.5),
                 ("sliding window", "partial rotary")),
        TinyArch("olmo2", lambda: _cfg("Olmo2Config"), ("qk-norm",)),
        TinyArch("gpt2", lambda: _gpt2()),
        TinyArch("gpt_neox", lambda: _neox(), ("partial rotary",)),
        TinyArch("gpt_oss", lambda: _cfg("GptOssConfig", head_dim=12, sliding_window=WINDOW, num_local_experts=3,
                                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                         num_experts_per_tok=2, layer_types=layers3),
                 ("learned sinks", "alternating local/global", "MoE")),
        TinyArch("granite", lambda: _cfg("GraniteConfig", attention_multiplier=0.2, residual_multiplier=0.7,
                                         embedding_multiplier=3.0, logits_scaling=2.0), ("own scaling",)),
        TinyArch("starcoder2", lambda: _cfg("Starcoder2Config", sliding_window=WINDOW), ("sliding window",)),
        TinyArch("smollm3", lambda: _cfg("SmolLM3Config", no_rope_layer_interval=2), ("no-RoPE layers",)),
        TinyArch("phi", lambda: _cfg("PhiConfig", partial_rotary_factor=0.5, qk_layernorm=True),
                 ("partial rotary", "qk-norm")),
        TinyArch("cohere2", lambda: _cfg("Cohere2Config", head_dim=12, sliding_window=WINDOW, layer_types=layers3),
                 ("alternating local/global",)),
        TinyArch("olmo3", lambda: _cfg("Olmo3Config", sliding_window=WINDOW, layer_types=layers3),
                 ("qk-norm", "alternating local/global")),
        TinyArch("deepseek_v3", lambda: _cfg("DeepseekV3Config", num_key_value_heads=4, q_lora_rank=None,
                                             kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                                             v_head_dim=6, head_dim=4, n_routed_experts=3, num_experts_per_tok=2,
                                             n_group=1, topk_group=1, first_k_dense_replace=1,
                                             moe_intermediate_size=20, n_shared_experts=1),
                 ("latent attention (d_v 6, d_qk 12)", "MoE")),
        TinyArch("opt", lambda: _cfg("OPTConfig", ffn_dim=40, word_embed_proj_dim=48, num_key_value_heads=4),
                 ("MLP projections on the block (fc1, fc2)",)),
        TinyArch("bitnet", lambda: _cfg("BitNetConfig"), ("a norm between attention and o_proj",)),
        TinyArch("qwen3_next", lambda: _cfg("Qwen3NextConfig", head_dim=12, num_hidden_layers=4,
                                            layer_types=["linear_attention", "full_attention"] * 2,
                                            linear_num_value_heads=4, linear_num_key_heads=2,
                                            linear_key_head_dim=8, linear_value_head_dim=8, num_experts=3,
                                            num_experts_per_tok=2, moe_intermediate_size=20,
                                            shared_expert_intermediate_size=20),
                 ("hybrid: attention in blocks 1 and 3 (linear attention between)", "output gate", "MoE")),
        TinyArch("jamba", lambda: _cfg("JambaConfig", num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1,
                                       num_experts=2, num_experts_per_tok=1, expert_layer_period=2,
                                       expert_layer_offset=1, mamba_d_state=4, mamba_d_conv=2, mamba_expand=1,
                                       mamba_dt_rank=4),
                 ("hybrid: attention in blocks 1 and 3 (Mamba between)", "MoE")),
    ]


def _gpt2():
    import transformers

    return transformers.GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=3, n_head=4, n_positions=128,
                                   bos_token_id=64, eos_token_id=66, pad_token_id=65,
                                   scale_attn_by_inverse_layer_idx=True)


def _neox():
    import transformers

    return transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                                      num_attention_heads=4, max_position_embeddings=128, rotary_pct=0.5,
                                      use_parallel_residual=True, bos_token_id=64, eos_token_id=66,
                                      pad_token_id=65, tie_word_embeddings=False)


ARCHS: dict[str, TinyArch] = {a.model_type: a for a in _archs()}


def build(model_type: str, *, seed: int = 0, attn_implementation: str = "eager"):
    """The tiny random model of ``model_type`` (fp32, eval mode), with weights scaled up so that
    attention logits are large (soft-capping and sinks then matter)."""
    from transformers import AutoModelForCausalLM

    config = ARCHS[model_type].make_config()
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                p.normal_(0.0, 0.2)  # larger than the usual 0.02: peaked, capped attention
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)  # distinct norms: discovery must tell them apart by what they compute
            if name.endswith("sinks"):
                p.copy_(torch.linspace(-1.0, 3.0, p.numel()))  # sinks from small to dominant
    return model.eval()

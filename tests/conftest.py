"""Shared fixtures: one SmolLM2 and one of each organism per test session.

Weights come from the workbench cache (``LENS_CACHE`` or the user cache dir), so only
the first session on a machine pays for dequantizing SmolLM2 and training organisms.
"""

from __future__ import annotations

import os

import pytest
import torch

# Each pytest-xdist worker gets its share of the cores (./setup.sh test runs 2 workers), and so do
# the processes it starts (the notebooks' kernels, the lens command): two workers each running
# two OpenMP threads on two cores spend their time spinning.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(4, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    # the notebooks set their own thread count (LENS_NOTEBOOK_THREADS, else 2), which OMP_NUM_THREADS
    # does not override: two notebook kernels of two threads each ran the 8K capture 6x slower
    os.environ.setdefault("LENS_NOTEBOOK_THREADS", str(_THREADS))

# Fuzzing profiles (tests/test_fuzz_*.py). "ci", the default: few examples, the same ones on
# every run (derandomize) and no example database, so CI is reproducible and short; a failure
# prints the blob to replay it with @reproduce_failure. "deep": many random examples, for a
# local hunt: pytest tests/kernels/test_fuzz_kernels.py --hypothesis-profile=deep (the flag comes from
# hypothesis' pytest plugin and is applied after this file loads "ci").
try:
    from hypothesis import settings
except ImportError:  # not installed: the fuzz modules skip themselves, saying so
    pass
else:
    settings.register_profile("ci", derandomize=True, database=None, max_examples=100, deadline=None,
                              print_blob=True)
    settings.register_profile("deep", max_examples=1000, deadline=None, print_blob=True)
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def smollm2():
    import lens

    return lens.load("smollm2")


@pytest.fixture(scope="session")
def tiny_llama():
    """A tiny random Llama with GQA and odd sizes, for parity tests with no downloads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lens import Subject

    torch.manual_seed(0)
    cfg = LlamaConfig(
        num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, hidden_size=66, head_dim=14,
        intermediate_size=37, vocab_size=97, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).eval()
    return Subject(model, _toy_tokenizer(97), name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    from lens import Subject

    torch.manual_seed(1)
    cfg = GPT2Config(n_layer=2, n_head=5, n_embd=5 * 7, vocab_size=97, n_positions=128, bos_token_id=1,
                     eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    return Subject(model, _toy_tokenizer(97), name="tiny-gpt2")


def _toy_tokenizer(vocab: int):
    """A whitespace word-level tokenizer over tokens w0..w{vocab-1}, BOS = w1 prepended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="w1 $A", special_tokens=[("w1", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w1", eos_token="w2", pad_token="w0", unk_token="w3")


@pytest.fixture(scope="session")
def bigram_backcopy():
    """The Bigram-Backcopy organism (seed 0): trained once per machine, then read from the cache."""
    from lens import organisms

    return organisms.train("bigram_backcopy", seed=0, progress=False)


@pytest.fixture(scope="session")
def induction_organism():
    """The two-layer induction organism (seed 0); ``info`` names its previous-token and induction heads."""
    from lens import organisms

    return organisms.train("induction", seed=0, progress=False)


# The slowest tests (seconds on the 2-core CI machine, clean clone of 2026-12-07), started first so
# that the short ones fill the end of the run on both workers instead of two long ones meeting there.
SLOW_FIRST = ("test_notebook_runs[06_long_context]", "test_notebook_runs[04_zerotuning_act]",  # ~120, ~100
              "test_saved_16k_capture_opens_without_a_model",  # ~60
              "test_triton_backend_equals_the_models_own_eager_pattern[gemma2]",  # ~50
              "test_notebook_runs[01_sinks_and_dormant_heads]",  # ~50
              "test_triton_backend_equals_the_models_own_eager_pattern[gpt_oss]",  # ~50
              "test_notebook_runs[02_entropy_collapse]",  # ~40
              "test_triton_backend_equals_the_models_own_eager_pattern[deepseek_v3]",  # ~35
              "test_notebook_runs[03_preplan_anchor]")  # ~30


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``./setup.sh test``: ``-n 2 --dist loadgroup``), every test that starts a
    Ray cluster runs on one worker (two clusters on a 2-core machine would starve each other), and
    the slowest tests are handed out first."""
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.xdist_group("ray"))
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.name, len(rank)))  # stable: the rest keep their order

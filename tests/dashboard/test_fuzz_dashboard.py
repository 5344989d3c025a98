"""Fuzzing the dashboard's text inputs: every callback that takes the user's text returns a message, never raises.

The callbacks run as plain functions (no browser, no Dash server) on a tiny random GPT-2
with a byte-level tokenizer built here (256 byte tokens, no merges, no download), so any
Unicode string becomes tokens the way a real BPE model's would, including control
characters, NUL, right-to-left marks, emoji sequences and the lone surrogates a broken
paste can send. Checked: the Analyze box (``analyze_request``, then the analysis itself,
run synchronously), the Reasoning prompt (``start_generation`` and ``generate``), and the
Interventions edit fields (``add_edit``): each returns a result or a message for the page;
a ValueError with a message is how the workers report bad input, anything else is a bug.
"""

from __future__ import annotations

import math

import pytest
import torch
from dash import no_update

from skips import require
require("hypothesis")
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

MAX_TOKENS = 48
SPECIAL = ["\x00", "\u202e", "\u200f", "\u200d", "\ufeff", "\r\n", "\t", "\x1b[31m", "\ud800", "\udfff",
           "👩‍👩‍👧", "🏳️‍🌈", "שלום עולם", "مرحبا", "e\u0301", "\U0010ffff", "<bos>", "w3", " ", ""]
#: Any code point (surrogates included: a browser can send half a pair) and the odd ones above.
texts = (st.text(st.characters(codec=None, exclude_categories=()), max_size=24)
         | st.lists(st.sampled_from(SPECIAL) | st.text(max_size=5), max_size=8).map("".join))


@pytest.fixture(scope="module")
def ctx():
    """The server-side context of an app over a tiny byte-level GPT-2 (limit MAX_TOKENS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from lens import dashboard
    from lens import Subject

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2}
    vocab.update({c: i + 3 for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=3, n_embd=24, vocab_size=len(vocab), n_positions=96, bos_token_id=0,
                     eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    app = dashboard.create_app(Subject(GPT2LMHeadModel(cfg).eval(), hf, name="tiny-bytes"), max_tokens=MAX_TOKENS)
    context = app._lens_context
    context.jobs.submit = lambda key, fn: None  # the page's callbacks only start jobs; tests run the work directly
    yield context
    context.jobs.shutdown()


SETTINGS = dict(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _message(value) -> None:
    assert isinstance(value, str), value


@settings(**SETTINGS)
@given(text=texts | st.none())
@example(text="ab\ud83dc").via("found: a lone surrogate raised TypeError in the tokenizer")
def test_analyze_box_answers_with_a_message(ctx, text):
    from lens.dashboard._app import analyze_request
    from lens.dashboard._work import analyze_text

    key, note = analyze_request(ctx, text)
    _message(note)
    event("refused" if key is None else "analyzed")
    if key is None:
        assert note, "a refused text needs a message"
        return
    analysis = analyze_text(ctx.subject, text)  # what the background job runs
    assert int(analysis.capture.lengths[0]) <= MAX_TOKENS


def test_a_one_megabyte_paste_is_refused_with_a_message(ctx):
    from lens.dashboard._app import analyze_request

    paste = ("Ünïcödé 👩‍👩‍👧 \u202eRTL\u202c \x00 " * 40_000)[:1_000_000]
    key, note = analyze_request(ctx, paste)
    assert key is None and "tokens" in note and f"at most {MAX_TOKENS}" in note


@settings(max_examples=max(3, settings.default.max_examples // 4), **SETTINGS)
@given(prompt=texts,
       n_new=st.integers(1, 3) | st.sampled_from([None, "", "3", 0, -1, 513, 1.5, float("nan"), float("inf"), "x"]))
@example(prompt="\udfff?", n_new=2).via("found: a lone surrogate raised TypeError in the tokenizer")
def test_reasoning_prompt_answers_with_a_message(ctx, prompt, n_new):
    from lens.dashboard._work import generate
    from lens.dashboard.pages.reasoning import start_generation

    pending, _poll_off, status, _text, _gen = start_generation(ctx, prompt, n_new)
    _message(status)
    event("refused" if pending is None else "generated")
    if pending is None:
        return
    try:  # what the background job runs; its ValueError is shown on the page
        out = generate(ctx.subject, prompt, min(int(n_new), 3))
    except ValueError as err:
        assert str(err)
    else:
        _message(out)


odd = st.sampled_from(["*", "-1", "7", "1e9", "9" * 5000, "nan", "inf", "-inf", "-0", "\u0661", "1,,2", "0x1",
                       "1_000", "\u00b2", "1e-320", "  ", "2.0"]) | texts | st.integers() | st.floats()
# Valid values first: derandomized runs draw the first branch more often, so edits get added too.
index = st.sampled_from(["all", "", "0", "1", "0,1", " 1 , 0 ", None, 0, 1]) | odd  # 2 layers, 3 heads
number = st.sampled_from(["0.5", "-1.5", "2", 0.5, 2, "1e-3", "0"]) | odd


@settings(**SETTINGS)
@given(kind=st.sampled_from(["scale_attention", "key_bias", "move_to_bos", "ablate", "gate"] * 4
                           + [None, "", "eval", "ablate ", "Gate", "\x00"]),
       layer=index, head=index, keys=index, value=number)
@example(kind="gate", layer="all", head="all", keys="all", value="-1.5").via("found: accepted, but no valid spec")
@example(kind="scale_attention", layer="0", head="0", keys="0", value="nan").via("found: NaN factor accepted")
@example(kind="key_bias", layer="0", head="0", keys="0", value="-inf").via("-inf bias: remove the keys")
def test_edit_fields_answer_with_a_message(ctx, kind, layer, head, keys, value):
    from lens.dashboard._work import spec_toml
    from lens.dashboard.pages.interventions import add_edit

    edits, message = add_edit(ctx, kind, layer, head, keys, value, [])
    _message(message)
    event("refused" if edits is no_update else "added")
    if edits is no_update:
        assert message.startswith("Cannot add this edit: ")
        return
    assert len(edits) == 1
    number = edits[0].get("factor", edits[0].get("bias", 0.0))
    assert math.isfinite(number) or number == -math.inf, edits  # NaN/inf never reach an edit
    spec_toml("induction", edits, task="induction", n_test=4)  # an accepted edit makes a valid spec

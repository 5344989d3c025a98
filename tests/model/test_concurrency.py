"""One Subject, many threads (issue 18): every workbench call gives exactly what it gives alone.

Captures (plain and editing), ``Subject.edited`` blocks (with residual hooks, and a
capture nested inside), ``Subject.logits``, ``head_outputs`` and a circuits patching run
are fired from 8 threads at once for 20 rounds on one tiny random Llama. Each result must
equal its serial result bit for bit (``torch.equal``), and afterwards the config's
attention implementation and every module's hook dicts must be as before. Hooks and routing
act only for the context that installed them (``lens.model._sites``, ``_routing.routed``), so
a raw ``model(...)`` from another thread passes through untouched; the per-model lock
(``lens.model._routing.model_lock``) serialises the workbench's routed passes.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import lens
from lens.model import _routing
from lens.edits import AblateHead, ScaleAttention, SteerResidual, head_outputs

from _tiny_archs import build

ROUNDS = 20
THREADS = 8
# Different lengths (3 to 14 tokens with BOS) so that a forward reading another thread's
# padding, mask or residual fails loudly or differs.
TEXTS = ["t01 t02", "t05 t06 t07 t08 t09 t05 t06 t07", "t10 t11 t12 t13 t14 t15 t16 t17 t18 t19 t20 t21 t22",
         "t30 t31 t30 t31 t30", "t40 t41 t42 t43 t44 t45 t46 t47 t48 t49 t50"]
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


@pytest.fixture(scope="module")
def subject():
    from lens.model.organisms import make_tokenizer

    return lens.Subject(build("llama", seed=3), make_tokenizer(), name="tiny-llama-threads")


def _state(s) -> tuple:
    """The shared model state a call may change: the attention implementation and every hook dict's keys."""
    hooks = tuple((name, d, tuple(getattr(m, d))) for name, m in s.model.named_modules() for d in HOOK_DICTS)
    return s.model.config._attn_implementation, hooks


def _tensors(result) -> dict[str, torch.Tensor]:
    """Every tensor a call returned, by a name, to compare exactly."""
    if isinstance(result, lens.Capture):
        out = {f"stat/{k}": v for k, v in result.stats.items()}
        out.update({f"resid/{k}": v for k, v in result.resid.items()})
        out.update({f"pattern/{k}": v for k, v in result.patterns.items()})
        out.update(tokens=result.tokens, lengths=result.lengths, logits=result.logits)
        return out
    if isinstance(result, torch.Tensor):
        return {"": result}
    if isinstance(result, dict):
        return {f"{k}/{n}": t for k, v in result.items() for n, t in _tensors(v).items()}
    if isinstance(result, (tuple, list)):
        return {f"{i}/{n}": t for i, v in enumerate(result) for n, t in _tensors(v).items()}
    raise TypeError(type(result))


def _jobs(s) -> dict[str, callable]:
    """Eight calls of every kind that touches the model's shared state."""
    from lens.circuits._runs import RunSpec, run

    steer = SteerResidual(layer=1, vector=torch.linspace(-1, 1, s.d_model), scale=2.0)
    scale = ScaleAttention(layer=1, keys=0, factor=0.25)
    ablate = AblateHead(layer=0, head=1)

    def edited_forward():
        ids = s.to_tokens(TEXTS[1:3])
        mask = (ids != s.pad_token_id).long()
        with torch.no_grad(), s.edited(ablate, steer):
            return s.model(input_ids=ids, attention_mask=mask).logits

    def edited_with_capture():  # re-entrant: the capture takes the lock the block already holds
        with torch.no_grad(), s.edited(scale):
            logits = s.model(input_ids=s.to_tokens(TEXTS[4])).logits
            cap = lens.capture(s, TEXTS[3], edits=[ablate], resid_layers=[1])
        return logits, cap

    def patching():
        ids = s.to_tokens(TEXTS[:2])
        lengths = (ids != s.pad_token_id).sum(1)
        logits, st = run(s, ids, lengths, RunSpec(record=frozenset({"z", "resid"})))
        return logits, st.records["z"], st.records["resid"]

    return {
        "capture one": lambda: lens.capture(s, TEXTS[0], patterns=[(0, 1), (2, 3)]),
        "capture ragged": lambda: lens.capture(s, TEXTS[1:4], resid_layers=[0, 2], batch_size=2, progress=False),
        "capture scaled": lambda: lens.capture(s, TEXTS[2], edits=[scale]),
        "capture ablated": lambda: lens.capture(s, TEXTS[4:] + TEXTS[:1], edits=[ablate, scale]),
        "edited forward": edited_forward,
        "edited + capture": edited_with_capture,
        "logits": lambda: s.logits(s.to_tokens(TEXTS[3])),
        # a raw forward, no lock: it must see none of the other threads' routing or hooks
        "raw forward": lambda: s.model(input_ids=s.to_tokens(TEXTS[4])).logits,
        "head outputs + patching": lambda: (head_outputs(s, TEXTS[2:4]), patching()),
    }


def _assert_same(got, want, what: str) -> None:
    got, want = _tensors(got), _tensors(want)
    assert got.keys() == want.keys(), what
    for k in want:
        assert torch.equal(got[k], want[k]), f"{what}: {k} differs from the serial result"


def _hammer(s, jobs: dict, serial: dict, rounds: int, failing: dict | None = None) -> None:
    """Run every job once per round, all rounds' jobs interleaved over THREADS threads; check each result."""
    failing = failing or {}
    order = [(r, name) for r in range(rounds) for name in [*jobs, *failing]]
    random.Random(0).shuffle(order)
    calls = {**jobs, **failing}
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [(name, pool.submit(calls[name])) for _, name in order]
        for name, fut in futures:
            if name in failing:
                with pytest.raises(Exception) as err:
                    fut.result()
                assert type(err.value) is type(serial[name]) and str(err.value) == str(serial[name]), name
            else:
                _assert_same(fut.result(), serial[name], name)


def test_many_threads_give_the_serial_results_and_leave_the_model_as_it_was(subject):
    s = subject
    before = _state(s)
    jobs = _jobs(s)
    serial = {name: job() for name, job in jobs.items()}
    assert _state(s) == before
    _hammer(s, jobs, serial, ROUNDS)
    assert _state(s) == before  # config not left on "lens", no hook left behind or lost


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the serial reference of a failing call is its error
        return e
    raise AssertionError("expected the call to fail")


def test_a_thread_that_fails_inside_a_block_restores_the_model_for_the_others(subject):
    s = subject
    before = _state(s)

    def raise_in_body():
        with s.edited(ScaleAttention(layer=0, keys=0, factor=0.5)):
            s.logits(s.to_tokens(TEXTS[0]))
            raise RuntimeError("the body of an edited block failed")

    def raise_in_forward():  # the residual hook raises inside the routed, hooked forward
        with s.edited(AblateHead(layer=2, head=0), SteerResidual(layer=0, vector=torch.ones(s.d_model + 1))):
            s.logits(s.to_tokens(TEXTS[2]))

    failing = {
        "edited body raises": raise_in_body,
        "edit raises in forward": raise_in_forward,
        "capture of a bad token id": lambda: lens.capture(s, [[s.tokenizer.bos_token_id, 5, 10_000]]),
    }
    jobs = _jobs(s)
    serial = {name: job() for name, job in jobs.items()}
    serial.update({name: _error(fn) for name, fn in failing.items()})
    assert _state(s) == before
    _hammer(s, jobs, serial, 6, failing)
    assert _state(s) == before


def test_the_subject_lock_is_the_models_reentrant_lock(subject):
    s = subject
    assert s.lock is _routing.model_lock(s.model)
    with s.lock, s.edited(ScaleAttention(layer=0, keys=0, factor=0.5)), s.lock:
        assert s.model.config._attn_implementation == _routing.IMPLEMENTATION
    assert s.model.config._attn_implementation != _routing.IMPLEMENTATION


# --- hooks and routing act only for the context that installed them (issue 27) -----------------
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_a_plain_forward_from_another_thread_inside_a_block_is_untouched(impl):
    """A raw ``model(...)`` run by another thread *while* an edited block with hooks is open in
    this one (the thread is started and joined inside the block, so they surely overlap) gives
    the model's own output bit for bit, through its own implementation (sdpa or eager)."""
    from lens.model.organisms import make_tokenizer

    s = lens.Subject(build("llama", seed=5, attn_implementation=impl), make_tokenizer(), name=f"tiny-{impl}")
    ids = s.to_tokens(TEXTS[1])
    with torch.no_grad():
        want = s.model(input_ids=ids).logits
        edits = (AblateHead(layer=0, head=1), SteerResidual(layer=1, vector=torch.ones(s.d_model), scale=3.0))
        got = {}
        with s.edited(*edits), s.hooks({"resid_post.0": lambda x, call: x[:, :1].expand_as(x)}):
            edited = s.model(input_ids=ids).logits
            other = threading.Thread(target=lambda: got.update(out=s.model(input_ids=ids).logits))
            other.start()
            other.join()
            assert s.model.config._attn_implementation == _routing.IMPLEMENTATION  # here, the block is open
            seen = []
            probe = threading.Thread(target=lambda: seen.append(s.model.config._attn_implementation))
            probe.start()
            probe.join()
            assert seen == [impl]  # and another thread reads the model's own implementation
    assert not torch.equal(edited, want)  # the block did act on its own forward
    assert torch.equal(got["out"], want)


def test_plain_forwards_beside_captures_on_smollm2(smollm2):
    """The measurement of 2026-12-07: one thread captures a 121-token text 4 times while another
    calls ``subject.model`` on a 7-token text. All 12 plain forwards crashed (the capture's hooks
    caught them); now each equals the plain forward alone, and each capture the capture alone."""
    s = smollm2
    long_text = " ".join(f"w{i}" for i in range(200))
    long_ids = s.to_tokens(long_text)[:, :121]
    short_ids = s.to_tokens("The cat sat on the mat now")
    assert long_ids.shape == (1, 121) and short_ids.shape == (1, 7)
    with torch.no_grad():
        want = s.model(input_ids=short_ids).logits
    alone = lens.capture(s, long_ids, progress=False)
    plain, overlapped, captures = [], [], []
    done = threading.Event()

    def capturing():
        try:
            for _ in range(4):
                captures.append(lens.capture(s, long_ids, progress=False))
        finally:
            done.set()

    def forwarding():
        with torch.no_grad():
            while len(plain) < 12 or not done.is_set():
                routed = isinstance(s.model.config, _routing._Routable)  # a capture's routed block is open
                plain.append(s.model(input_ids=short_ids).logits)
                overlapped.append(routed)

    threads = [threading.Thread(target=capturing), threading.Thread(target=forwarding)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(captures) == 4 and len(plain) >= 12
    assert any(overlapped), "no plain forward ran while a capture was routed: the test did not test"
    for out in plain:
        assert torch.equal(out, want)
    for cap in captures:
        _assert_same(cap, alone, "capture beside plain forwards")


def test_the_dashboards_background_job_beside_a_notebook_call(smollm2):
    """The dashboard analyzes a text in a background thread (progress hooks on every block, a
    capture) while a notebook-style call runs the model directly: neither sees the other."""
    from lens.dashboard import _work

    s = smollm2
    text = "Attention sinks appear when a head has nothing better to attend to. " * 3
    ids = s.to_tokens("A notebook runs the model directly")
    with torch.no_grad():
        want = s.model(input_ids=ids).logits
    alone = _work.analyze_text(s, text)

    class Progress:
        def __init__(self):
            self.steps = []

        def update(self, message, fraction):
            self.steps.append(message)

    progress, notebook, result = Progress(), [], {}
    job = threading.Thread(target=lambda: result.update(job=_work.analyze_text(s, text, progress)))
    job.start()
    with torch.no_grad():
        while job.is_alive() or not notebook:
            notebook.append(s.model(input_ids=ids).logits)
    job.join()
    for out in notebook:
        assert torch.equal(out, want)
    _assert_same(result["job"].capture, alone.capture, "the dashboard's capture")
    # one step per block of the job's own pass: the notebook's forwards were not counted
    layers = [m for m in progress.steps if m.startswith("capturing")]
    assert layers == [f"capturing: layer {i}/{s.n_layers}" for i in range(1, s.n_layers + 1)]

"""The dashboard in a real browser: Playwright driving Debian's chromium (never Playwright's own download).

The app runs in a thread on a free port. What is checked: the figures the page draws hold
the numbers lens computes for the same text (read from the plotly div), switching layer or
head redraws the pattern of that head, an edit changes the before/after comparison the
way the edit says (attention to key 0 scaled to zero), bad input shows a message and the
app keeps working, two tabs keep their own results, a 16K capture saved on disk opens with
no model and no forward pass, and no two controls overlap on any page. The timings asked
for in issues 8 and 17 are printed (run with -s to see them), not asserted.
"""

from __future__ import annotations

import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _browser import (DOCS, SHOTS, analyze, browser, go_to, needs_browser, overlaps, pick, plot_data, served,
                      set_theme, wait_plot, whole_page)

import lens

BB_TEXT = "t03 t17 t42 t05 t11 t30 t08 t03 t21 t09 t14 t30 t02 t44 t07 t19"  # 16 tokens + <bos>
PAGES = ("overview", "attention", "reasoning", "interventions", "circuits", "probes", "runs", "census")
__all__ = ["browser"]  # a fixture, imported for pytest


def screenshots(page, out: Path, tag: str, pages=PAGES) -> dict[str, Path]:
    """Every page in both themes (``{tag}-{page}-{theme}.png``); checks that no controls overlap on any."""
    shots = {}
    for theme in ("light", "dark"):
        set_theme(page, theme == "dark")
        for name in pages:
            go_to(page, name)
            page.wait_for_timeout(400)
            assert overlaps(page, f"#page-{name}") == [], f"overlapping controls on {name} ({theme})"
            shots[name, theme] = out / f"{tag}-{name}-{theme}.png"
            whole_page(page, shots[name, theme])
    set_theme(page, False)
    return shots


@pytest.mark.browser
@needs_browser
@pytest.mark.organism
def test_dashboard_on_bigram_backcopy(bigram_backcopy, browser, tmp_path):
    from lens import dashboard
    from lens.analyzers import sink_rate

    subject = bigram_backcopy
    app = dashboard.create_app(subject)
    ref = lens.capture(subject, BB_TEXT)
    alpha = float(sink_rate(ref).frame["sink_alpha"].iloc[0])
    with served(app) as url:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(url)
        page.wait_for_selector("#analyze-button")
        assert overlaps(page) == []

        # bad input: a message in the page, not a dead app
        page.fill("#text-input", "   ")
        page.click("#analyze-button")
        page.wait_for_function("() => document.querySelector('#message').textContent.includes('empty')")
        page.fill("#text-input", " ".join(["t01"] * 70))
        page.click("#analyze-button")
        page.wait_for_function("() => document.querySelector('#message').textContent.includes('at most 64')")

        # a good text: the head grid holds lens' own sink_alpha for the single head
        analyze(page, BB_TEXT, "17 tokens")
        assert page.text_content("#message") == ""
        z = plot_data(page, "overview-head-grid")[0]["z"]
        assert z[0][0] == pytest.approx(alpha, abs=1e-6)

        # attention page: the exact 17 x 17 pattern, rows sum to 1
        go_to(page, "attention")
        wait_plot(page, "attention-pattern", "t.includes('L0 H0')")
        pat = torch.tensor(plot_data(page, "attention-pattern")[0]["z"])
        assert pat.shape == (17, 17)
        assert torch.allclose(pat.sum(-1), torch.ones(17), atol=1e-4)
        assert overlaps(page) == []

        # interventions: scale attention to key 0 by 0 on L0H0, then by 0.5: the comparison changes
        go_to(page, "interventions")
        page.fill("#edit-value", "0")
        page.click("#edit-add")
        page.wait_for_function("() => document.querySelector('#edit-list-view').textContent.includes('factor=0)')")
        page.click("#edit-run")
        wait_plot(page, "edit-patterns", "d.length === 3")
        before, after, diff = (torch.tensor(t["z"], dtype=torch.float64) for t in plot_data(page, "edit-patterns"))
        assert after[1:, 0].abs().max() < 1e-6  # no attention left on key 0 (rows >= 1 see other keys)
        assert torch.allclose(after[1:].sum(-1), torch.ones(16, dtype=torch.float64), atol=1e-4)
        assert torch.allclose(diff, after - before, atol=1e-9)
        title_zero = page.evaluate("() => document.querySelector('#edit-next-token .js-plotly-plot').layout.title.text")
        spec = page.input_value("#spec-text")
        assert "[[edits]]" in spec and 'type = "scale_attention"' in spec and "factor = 0.0" in spec

        page.click("#edit-clear")
        page.fill("#edit-value", "0.5")
        page.click("#edit-add")
        page.click("#edit-run")
        page.wait_for_function(
            "(old) => { const g = document.querySelector('#edit-next-token .js-plotly-plot');"
            " return g.layout.title.text !== old; }", arg=title_zero)
        after_half = torch.tensor(plot_data(page, "edit-patterns")[1]["z"], dtype=torch.float64)
        # ScaleAttention(0.5) on key 0: p'_i0 = 0.5 p_i0 / (1 - 0.5 p_i0)
        p0 = before[1:, 0]
        assert torch.allclose(after_half[1:, 0], 0.5 * p0 / (1 - 0.5 * p0), atol=1e-4)
        # reasoning: generate a continuation; the page's preplan/anchor marks are lens' own
        go_to(page, "reasoning")
        page.fill("#reasoning-prompt", "t03 t17 t42")
        page.fill("#reasoning-new-tokens", "8")
        page.click("#reasoning-generate")
        wait_plot(page, "reasoning-profile", "d[0].x.length === 12")  # <bos> + 3 + 8 tokens
        generated = page.input_value("#text-input")
        assert generated.startswith("t03 t17 t42") and len(generated.split()) == 11
        from lens.analyzers import preplan_anchor

        ref = preplan_anchor(lens.capture(subject, generated)).frame
        drawn = plot_data(page, "reasoning-profile")
        assert drawn[1]["x"] == ref.loc[ref["preplan"], "pos"].tolist()
        assert drawn[3]["x"] == ref.loc[ref["anchor"], "pos"].tolist()
        assert drawn[2]["y"][:5] == pytest.approx(ref["fai"].tolist()[:5], abs=1e-6)
        # circuits and probes: tests/dashboard/test_dashboard_model_pages.py
        shots = screenshots(page, tmp_path, "bigram_backcopy", pages=("overview", "attention", "interventions"))

        # two tabs with different texts keep their own results
        other = browser.new_page(viewport={"width": 1300, "height": 900})
        other.goto(url)
        other.wait_for_selector("#analyze-button")
        analyze(other, "t05 t06 t07 t08", "5 tokens")
        page.goto(url)  # a fresh session in this tab
        page.wait_for_selector("#analyze-button")
        analyze(page, BB_TEXT, "17 tokens")  # from the cache, in a fresh session
        assert "5 tokens" in other.text_content("#overview-meta")
        assert "17 tokens" in page.text_content("#overview-meta")
        other.close()
        page.close()
    for p in shots.values():
        assert p.stat().st_size > 5_000


def _text_of(subject, n_tokens: int) -> str:
    """A natural text of exactly ``n_tokens`` tokens for ``subject``."""
    base = ("The committee met on Tuesday to review the budget for the new library. After a long discussion about "
            "staffing, opening hours and the cost of books, the members agreed to postpone the final vote until "
            "the next meeting, when the treasurer would present revised figures. Meanwhile, volunteers offered to "
            "organise a fundraising fair in the spring, with music, food stalls and a second-hand book sale. ") * 4
    ids = subject.tokenizer(base, add_special_tokens=False)["input_ids"]
    extra = 1 if subject.prepends_bos else 0
    text = subject.tokenizer.decode(ids[: n_tokens - extra])
    for cut in range(n_tokens - extra, 0, -1):  # decoding can merge tokens; shrink until it fits exactly
        text = subject.tokenizer.decode(ids[:cut])
        if len(subject.tokenizer(text, add_special_tokens=True)["input_ids"]) <= n_tokens:
            break
    return text


@pytest.mark.browser
@needs_browser
@pytest.mark.smollm2
def test_dashboard_on_smollm2(smollm2, browser, tmp_path):
    from lens import dashboard
    subject = smollm2
    text = _text_of(subject, 128)
    n = len(subject.tokenizer(text, add_special_tokens=True)["input_ids"])
    app = dashboard.create_app(subject)
    ctx = app._lens_context
    with served(app) as url:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(url)
        page.wait_for_selector("#analyze-button")
        seconds = analyze(page, text, f"{n} tokens", timeout=120_000)
        print(f"\n[timing] SmolLM2, {n}-token text: submit -> Overview drawn in {seconds:.2f} s (goal < 5 s)")
        analysis = ctx.analysis(ctx.analysis_key(text))
        grid = plot_data(page, "overview-head-grid")[0]["z"]
        table = analysis.atlas.to_frame()
        assert len(grid) == 30 and len(grid[0]) == 9
        row = table[(table["layer"] == 7) & (table["head"] == 4)].iloc[0]
        assert grid[7][4] == pytest.approx(float(row["sink_alpha"]), abs=1e-6)
        # time again from the cache: going back to a text is instant
        page.fill("#text-input", "A different short text.")
        page.click("#analyze-button")
        page.wait_for_function("() => !document.querySelector('#overview-meta').textContent.includes('128 tokens')",
                               timeout=60_000)
        cached = analyze(page, text, f"{n} tokens")
        print(f"[timing] SmolLM2, same text again (cached): {cached:.2f} s")

        go_to(page, "attention")
        wait_plot(page, "attention-pattern", "t.includes('L0 H0')")
        times = []
        for layer, head in ((3, 5), (12, 2), (29, 8), (7, 4)):
            pick(page, "attention-layer", f"L{layer}")
            page.click("#attention-head")
            t0 = time.perf_counter()
            page.get_by_role("option", name=f"H{head}", exact=True).click()
            wait_plot(page, "attention-pattern", f"t.includes('L{layer} H{head}')", timeout=20_000)
            times.append(time.perf_counter() - t0)
        print(f"[timing] SmolLM2: switch head -> pattern redrawn in {1000 * statistics.median(times):.0f} ms "
              f"median (all: {', '.join(f'{1000 * t:.0f}' for t in times)} ms; goal < 500 ms)")
        from lens.dashboard.pages import attention

        key = ctx.analysis_key(text)
        server = []
        for _ in range(3):
            t0 = time.perf_counter()
            attention.render(ctx, key, "7", "4", None, None, "received")
            server.append(time.perf_counter() - t0)
        print(f"[timing] SmolLM2: of which the server builds the figures in {1000 * statistics.median(server):.0f} ms")
        z = torch.tensor(plot_data(page, "attention-pattern")[0]["z"], dtype=torch.float64)
        ref = analysis.capture.stats["pooled"][0, 7, 4, :n, :n].double()
        assert z.shape == (n, n) and torch.allclose(z, ref, atol=1e-6)

        shots = screenshots(page, tmp_path, "smollm2", pages=PAGES[:6])  # runs and census: tests of their own
        SHOTS.mkdir(parents=True, exist_ok=True)
        for name in PAGES[:6]:
            shutil.copy(shots[name, "light"], SHOTS / f"{name}.png")
        go_to(page, "overview")
        page.set_viewport_size({"width": 1300, "height": 1500})  # the README's picture: cards, findings, head grid
        page.wait_for_timeout(500)
        page.screenshot(path=str(DOCS / "dashboard.png"), full_page=False)
        page.close()
    assert (DOCS / "dashboard.png").stat().st_size > 10_000


# --- callbacks as plain functions (no browser) -------------------------------------------------


def _wait(ctx, key, timeout=120.0):
    t0 = time.perf_counter()
    while ctx.jobs.status(key)["state"] == "running":
        assert time.perf_counter() - t0 < timeout, "job did not finish"
        time.sleep(0.05)
    return ctx.jobs.status(key)


def test_long_input_window_gets_exact_rows(tiny_gpt2, monkeypatch):
    """A pooled input: a short query window is captured exactly in the background, then drawn exactly."""
    from lens import dashboard
    from lens.dashboard import _work
    from lens.dashboard._app import analyze_request
    from lens.dashboard.pages import attention

    monkeypatch.setattr(_work, "POOL_MAX", 4)  # n tokens -> pool factor ceil(n / 4)
    app = dashboard.create_app(tiny_gpt2)
    ctx = app._lens_context
    text = " ".join(f"w{i}" for i in (5, 9, 14, 22, 7, 31, 40, 2, 11, 60))
    key, note = analyze_request(ctx, text)
    assert _wait(ctx, key)["state"] == "done"
    n = int(ctx.analysis(key).capture.lengths[0])
    f = math.ceil(n / 4)
    assert f >= 2
    fig, _, _, _, note, done = attention.render(ctx, key, "1", "3", None, None, "received")
    assert f"pooled {f}x{f}" in fig.layout.title.text and done
    fig, _, _, _, note, done = attention.render(ctx, key, "1", "3", 4, 8, "received")
    assert not done and "capturing the exact rows 4-7" in note
    wkey = attention.exact_window(ctx, ctx.analysis(key), 1, 3, (4, 8))[1]
    assert _wait(ctx, wkey)["state"] == "done"
    fig, _, _, _, note, done = attention.render(ctx, key, "1", "3", 4, 8, "received")
    assert done and "exact rows 4-7" in note
    ref = lens.capture(tiny_gpt2, text, patterns=[(1, 3)]).patterns[(1, 3)][0, 4:8, :8]
    assert np.allclose(np.asarray(fig.data[0].z, dtype=float), ref.double().numpy(), atol=1e-6)
    # bad fields give messages, not exceptions
    assert "No head L2H0" in attention.render(ctx, key, "2", "0", None, None, "received")[4]
    assert "window must" in attention.render(ctx, key, "0", "0", 9, 3, "received")[4]
    ctx.jobs.shutdown()


def test_edit_fields_and_spec_are_checked(tiny_gpt2):
    from lens.dashboard._work import build_edit, edit_fields, spec_toml

    f = edit_fields("scale_attention", "1", "0,2", "0", "0.5")
    assert f == {"type": "scale_attention", "layer": 1, "head": [0, 2], "keys": 0, "factor": 0.5}
    assert build_edit(f) == lens.edits.ScaleAttention(layer=1, head=(0, 2), keys=0, factor=0.5)
    assert build_edit(edit_fields("ablate", "all", "4", None, None)) == lens.edits.AblateHead(layer=None, head=4)
    for bad in (("scale_attention", "x", "0", "0", "1"), ("gate", "0", "0", None, "abc"), ("eval", "0", "0", "0", "1")):
        with pytest.raises(ValueError):
            edit_fields(*bad)
    text = spec_toml("smollm2", [f], task="sentiment", n_test=20)
    from lens.experiments import parse_spec

    spec = parse_spec(text)
    assert spec.task == "sentiment" and spec.n_test == 20
    assert spec.edits[0]["factor"] == 0.5 and spec.edits[0]["head"] in ([0, 2], (0, 2))


# --- saved work: a long capture opened with no model -------------------------------------------
LONG = 16_384
LONG_STATS = ["sink_mass", "sink_mass_k", "entropy", "entropy_norm", "received", "visible", "distance", "pooled",
              "prev_token", "diag_mass", "waad"]


def _tiny_llama(n_ctx: int, name: str):
    from conftest import _toy_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=97, max_position_embeddings=n_ctx, bos_token_id=1,
                      eos_token_id=2)
    return lens.Subject(LlamaForCausalLM(cfg).eval(), _toy_tokenizer(97), name=name)


@pytest.fixture(scope="module")
def long_capture(tmp_path_factory) -> Path:
    """A 16K-token capture of a tiny random llama, made here on the CPU with the chunked backend, saved."""
    from lens.kernels import StatOptions

    subject = _tiny_llama(LONG, "tiny-llama-16k")
    ids = torch.randint(4, 97, (1, LONG), generator=torch.Generator().manual_seed(0))
    ids[0, 0] = 1
    cap = lens.capture(subject, ids, backend="chunked", stats=LONG_STATS, options=StatOptions(pool_max=128),
                       progress=False)
    cap.stats["sink_mass"][0, 1, 0, 9_999] = 0.93  # one spike a single position wide: decimation must keep it
    return cap.save(tmp_path_factory.mktemp("saved") / "long16k")


def _no_forward(*_a, **_k):
    raise AssertionError("a forward pass ran, with no model loaded")


@pytest.mark.browser
@needs_browser
def test_saved_16k_capture_opens_without_a_model(long_capture, browser, tmp_path, monkeypatch):
    from lens import dashboard
    from lens.dashboard.pages import attention

    monkeypatch.setattr(torch.nn.Module, "__call__", _no_forward)  # --model none runs no forward pass, at all
    ref = lens.Capture.load(long_capture)
    atlas = lens.analyze(ref)
    first = long_capture.parent / "first16k"  # a second saved capture, shown first: a copy under another name
    shutil.copytree(long_capture, first)
    app = dashboard.create_app(None, captures=[first, long_capture])
    app._lens_context.wait_saved()  # opened at start, as `lens dashboard` does while the browser loads
    meta_has = "() => (document.querySelector('#overview-meta') || {}).textContent?.includes(%r)"
    with served(app) as url:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        t0 = time.perf_counter()
        page.goto(url)  # a cold start: the app's scripts (Dash, Mantine, AG Grid, plotly.js: 8 MB) load first
        page.wait_for_function(meta_has % "first16k", timeout=60_000)
        wait_plot(page, "overview-head-grid")
        cold = time.perf_counter() - t0
        page.wait_for_function("() => !document.querySelector('[data-dash-is-loading=\"true\"]')")
        page.wait_for_timeout(500)
        page.click("#source-select")
        t0 = time.perf_counter()
        page.get_by_role("option", name="saved: long16k", exact=True).click()
        page.wait_for_function(meta_has % "long16k", timeout=60_000)
        wait_plot(page, "overview-head-grid")
        opened = time.perf_counter() - t0
        print(f"\n[timing] a {LONG:,}-token saved capture: picked in the open app -> its Overview drawn in "
              f"{opened:.2f} s (goal < 3 s); a cold page load -> the first capture's Overview {cold:.2f} s")
        assert f"{LONG} tokens" in page.text_content("#overview-meta")
        table = atlas.to_frame()
        z = plot_data(page, "overview-head-grid")[0]["z"]
        assert z[1][0] == pytest.approx(float(table.query("layer == 1 and head == 0")["sink_alpha"].iloc[0]), abs=1e-6)
        assert page.locator("#overview-head-table .ag-row").count() > 0  # the per-head grid table is filled
        assert overlaps(page) == []

        # clicking a head-grid cell opens that head on the Attention page
        x, y = page.evaluate("""() => { const g = document.querySelector('#overview-head-grid .js-plotly-plot');
            g.scrollIntoView({block: 'center'});
            const fl = g._fullLayout, r = g.getBoundingClientRect();
            return [r.left + fl._size.l + fl.xaxis.l2p(1), r.top + fl._size.t + fl.yaxis.l2p(1)]; }""")
        page.mouse.click(x, y)
        page.wait_for_selector("#page-attention", state="visible")
        wait_plot(page, "attention-positions", "t.includes('L1H1')")
        assert page.input_value("#attention-layer") == "L1" and page.input_value("#attention-head") == "H1"
        pick(page, "attention-head", "H0")
        wait_plot(page, "attention-positions", "t.includes('L1H0')")
        drawn = plot_data(page, "attention-positions")
        sink = ref.stats["sink_mass"][0, 1, 0].double().numpy()
        assert len(drawn[0]["x"]) < 5_000  # decimated for the browser ...
        assert max(drawn[0]["y"]) == pytest.approx(sink.max()) and 9_999 in drawn[0]["x"]  # ... keeping the spike
        assert min(drawn[0]["y"]) == pytest.approx(sink.min())
        pooled = plot_data(page, "attention-pattern")[0]["z"]
        assert len(pooled) == 128  # the pooled map: 128 x 128 blocks of 128 positions
        # zoom: the server redraws the visible range, exact at this scale
        times = []
        for a, b in ((1_000, 1_400), (8_000, 8_300), (9_900, 10_100), (0, 600)):
            t0 = time.perf_counter()
            page.evaluate(f"() => Plotly.relayout(document.querySelector('#attention-positions .js-plotly-plot'), "
                          f"{{'xaxis.range[0]': {a}, 'xaxis.range[1]': {b}}})")
            page.wait_for_function(  # the figure the server drew for this range (its x is base64 in gd.data)
                "(r) => { const g = document.querySelector('#attention-positions .js-plotly-plot');"
                " const m = g && g.layout && g.layout.meta; return m && m.range[0] === r[0] && m.range[1] === r[1]; }",
                arg=[a, b + 1], timeout=20_000)
            times.append(time.perf_counter() - t0)
        print(f"[timing] {LONG:,} positions: zoom -> redrawn with exact values in "
              f"{1000 * statistics.median(times):.0f} ms median (all: {', '.join(f'{1000 * t:.0f}' for t in times)} "
              "ms; goal < 500 ms)")
        drawn = plot_data(page, "attention-positions")
        assert drawn[0]["x"] == list(range(601)) and drawn[0]["y"] == pytest.approx(sink[:601].tolist(), abs=1e-6)
        note = page.text_content("#attention-note")
        assert "pooled 128x128" in note and "--model tiny-llama-16k" in note  # no exact rows without its model
        assert attention.positions(app._lens_context, "saved:long16k", "1", "0", ["sink_mass"])[0].layout.meta[
            "decimated"]
        shots = screenshots(page, tmp_path, "long16k", pages=("overview", "attention", "reasoning"))
        page.close()
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shots["attention", "light"], SHOTS / "attention-16k.png")


def test_saved_capture_gets_exact_rows_only_from_its_model(tiny_gpt2, tmp_path, monkeypatch):
    """A pooled saved capture re-opened with its model: a short window is re-captured from its token ids."""
    from lens import dashboard
    from lens.dashboard import _work
    from lens.dashboard.pages import attention

    monkeypatch.setattr(_work, "POOL_MAX", 4)
    text = " ".join(f"w{i}" for i in (5, 9, 14, 22, 7, 31, 40, 2, 11, 60, 8, 19))
    saved = lens.capture(tiny_gpt2, text, options=_work.stat_options()).save(tmp_path / "short")
    other = _tiny_llama(64, "tiny-gpt2")  # the same name, another model: its shape gives it away
    for subject, exact in ((tiny_gpt2, True), (other, False), (None, False)):
        app = dashboard.create_app(subject, captures=[saved])
        ctx = app._lens_context
        ctx.wait_saved()
        key = "saved:short"
        assert ctx.analysis(key).text is None and ctx.same_model(ctx.analysis(key)) == exact
        out = attention.render(ctx, key, "1", "3" if exact else "0", 4, 8, "received")
        if exact:
            assert not out[5] and "capturing the exact rows 4-7" in out[4]
            wkey = attention.exact_window(ctx, ctx.analysis(key), 1, 3, (4, 8))[1]
            assert _wait(ctx, wkey)["state"] == "done"
            fig = attention.render(ctx, key, "1", "3", 4, 8, "received")[0]
            ref = lens.capture(tiny_gpt2, text, patterns=[(1, 3)]).patterns[(1, 3)][0, 4:8, :8]
            assert np.allclose(np.asarray(fig.data[0].z, dtype=float), ref.double().numpy(), atol=1e-6)
        else:
            assert out[5] and "exact rows need the model this capture was made with" in out[4]
        ctx.jobs.shutdown()


def test_cli_serves_saved_work_with_no_model(tiny_gpt2, tmp_path):
    """``lens dashboard --model none --capture DIR`` starts, serves the page and lists the capture."""
    import socket
    import urllib.request

    saved = lens.capture(tiny_gpt2, "w5 w9 w14").save(tmp_path / "three")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lens.cli", "dashboard", "--model", "none", "--capture",
                             str(saved), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        layout = None
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 120 and layout is None:
            assert proc.poll() is None, proc.stdout.read()
            try:
                layout = urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert layout is not None, "the dashboard did not start"
        assert "saved: three" in layout and "no model loaded" in layout
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "model no model" in out and "1 saved capture(s)" in out
    bad = subprocess.run([sys.executable, "-m", "lens.cli", "dashboard", "--model", "none", "--store", str(saved)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not a store" in bad.stderr


def test_a_damaged_saved_capture_is_reported_not_shown(tiny_gpt2, tmp_path):
    """A capture whose tensors changed after the save: the page gets the checksum error, not its numbers."""
    from lens import dashboard
    from lens.dashboard._app import _first_open

    saved = lens.capture(tiny_gpt2, "w5 w9 w14 w22").save(tmp_path / "damaged")
    with open(saved / "tensors.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    app = dashboard.create_app(None, captures=[saved])
    ctx = app._lens_context
    ctx.wait_saved()
    state, message = ctx.saved_status("damaged")
    assert state == "error" and "content hash" in message and str(saved) in message
    assert ctx.analysis("saved:damaged") is None and _first_open(ctx) is None
    with pytest.raises(FileNotFoundError, match="no such directory"):
        dashboard.create_app(None, captures=[tmp_path / "missing"])

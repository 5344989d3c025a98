"""The pages that run the model (Reasoning, Interventions, Circuits, Probes): layout, jobs and no-model guards.

In headless chromium on the Bigram-Backcopy organism: no two controls of a page overlap,
no figure frame shows before its data exists (a quiet line says what to do instead), each
page's job draws the numbers the lens/circuits/probes APIs compute, and a finished job or a
refused input sends a notification. Without a model (``create_app(None)``) every page says
so instead of showing controls, and its functions answer with messages, never errors.
"""

from __future__ import annotations

import pytest
import torch
from dash import no_update

import lens
from _browser import (analyze, browser, go_to, needs_browser, overlaps,  # noqa: F401 (browser: a fixture)
                      plot_data, served, wait_plot)

BB_TEXT = "t03 t17 t42 t05 t11 t30 t08 t03 t21 t09 t14 t30 t02 t44 t07 t19"  # 16 tokens + <bos>

PAGES = ("reasoning", "interventions", "circuits", "probes")


def _visible(page, selector: str) -> bool:
    return page.evaluate(f"() => {{ const e = document.querySelector('{selector}'); "
                         "return !!e && e.offsetParent !== null; }")


def _notified(page, text: str, timeout: float = 30_000) -> None:
    page.wait_for_function(f"() => [...document.querySelectorAll('.mantine-Notification-root')]"
                           f".some(n => n.textContent.includes({text!r}))", timeout=timeout)


# --- without a model: plain functions ------------------------------------------------------------


def test_pages_without_a_model_answer_with_messages():
    from lens import dashboard
    from lens.dashboard.pages import circuits, interventions, probes, reasoning

    app = dashboard.create_app(None)
    ctx = app._lens_context
    assert ctx.subject is None
    for pending, poll_off, _key, status, note in (
            interventions.start_edits(ctx, None, [{"type": "ablate", "layer": 0, "head": 0}]),
            circuits.start_circuit(ctx, "induction", 8, 20, 0),
            probes.start_probes(ctx, "repeats", 32)):
        assert pending is None and poll_off and "--model none" in status
        assert note[0]["color"] == "red"
    edits, message = interventions.add_edit(ctx, "ablate", "0", "0", None, None, [])
    assert edits is no_update and message.startswith("Cannot add this edit: ")
    assert reasoning.start_generation(ctx, "t03 t17", 4)[0] is None
    assert reasoning.render(ctx, None) == ([], None, None, None)
    assert circuits.render(ctx, None) is None and probes.render(ctx, None) is None
    assert interventions.render(ctx, None, "0", "0")[:2] == (None, None)
    ctx.jobs.shutdown()


@pytest.mark.organism
def test_edits_refuse_a_saved_capture(bigram_backcopy, tmp_path):
    """A saved capture has no text to run an edited pass on: the page says so, the job never starts."""
    from lens import dashboard
    from lens.dashboard.pages import interventions

    lens.capture(bigram_backcopy, BB_TEXT).save(tmp_path / "cap")
    app = dashboard.create_app(bigram_backcopy, captures=[tmp_path / "cap"])
    ctx = app._lens_context
    ctx.wait_saved()
    key = "saved:cap"
    assert ctx.analysis(key) is not None and ctx.analysis(key).text is None
    edits = [{"type": "ablate", "layer": 0, "head": 0}]
    pending, poll_off, _shown, status, note = interventions.start_edits(ctx, key, edits)
    assert pending is None and poll_off and "saved capture" in status and "live text" in status
    assert note[0]["color"] == "red"
    ctx.jobs.shutdown()


def test_value_field_follows_the_edit_type():
    from lens.dashboard.pages.interventions import value_field

    assert value_field("scale_attention") == ("factor", "a number >= 0", False, False)
    assert value_field("key_bias")[0] == "bias" and not value_field("key_bias")[3]
    assert value_field("ablate")[2:] == (True, True)  # no value, no keys


# --- in the browser ------------------------------------------------------------------------------


@pytest.mark.browser
@needs_browser
def test_model_pages_without_a_model_in_the_browser(browser):
    from lens import dashboard
    app = dashboard.create_app(None)
    with served(app) as url:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        page.wait_for_selector("#nav-overview")
        for name in PAGES:
            go_to(page, name)
            page.wait_for_function(f"() => document.querySelector('#page-{name}').textContent"
                                   ".includes('No model loaded')")
            assert overlaps(page, f"#page-{name}") == [], name
        assert not _visible(page, "#edit-run") and not _visible(page, "#circuits-run")
        assert errors == []
        page.close()


@pytest.mark.browser
@needs_browser
@pytest.mark.organism
def test_model_pages_on_bigram_backcopy(bigram_backcopy, browser):
    from lens import dashboard
    from lens.dashboard._jobs import make_key
    from lens.analyzers import preplan_anchor

    subject = bigram_backcopy
    app = dashboard.create_app(subject)
    ctx = app._lens_context
    with served(app) as url:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        page.wait_for_selector("#analyze-button")

        # before any data: no figure frames, a line saying what to do; no overlapping controls
        for name, graph in (("reasoning", "reasoning-profile"), ("interventions", "edit-next-token"),
                            ("circuits", "circuits-graph"), ("probes", "probes-curves")):
            go_to(page, name)
            assert _visible(page, f"#{graph}-empty") and not _visible(page, f"#{graph}"), name
            assert overlaps(page, f"#page-{name}") == [], name
        # and a narrow window wraps the controls instead of stacking them on each other
        page.set_viewport_size({"width": 820, "height": 900})
        for name in PAGES:
            go_to(page, name)
            assert overlaps(page, f"#page-{name}") == [], (name, "narrow")
        page.set_viewport_size({"width": 1300, "height": 900})

        go_to(page, "overview")
        analyze(page, BB_TEXT, "17 tokens")

        # interventions: a refused edit is a notification; attention to key 0 scaled by 0 leaves none there
        go_to(page, "interventions")
        page.fill("#edit-value", "abc")
        page.click("#edit-add")
        _notified(page, "factor must be a number")
        page.fill("#edit-value", "0")
        page.click("#edit-add")
        page.wait_for_function("() => document.querySelector('#edit-list-view').textContent.includes('factor=0)')")
        page.click("#edit-run")
        wait_plot(page, "edit-patterns", "d.length === 3")
        before, after, diff = (torch.tensor(t["z"], dtype=torch.float64) for t in plot_data(page, "edit-patterns"))
        assert after[1:, 0].abs().max() < 1e-6
        assert torch.allclose(after[1:].sum(-1), torch.ones(16, dtype=torch.float64), atol=1e-4)
        assert torch.allclose(diff, after - before, atol=1e-9)
        assert _visible(page, "#edit-next-token") and not _visible(page, "#edit-next-token-empty")
        _notified(page, "edit(s) applied")
        assert overlaps(page, "#page-interventions") == []

        # reasoning: generate; the drawn preplan/anchor marks are lens' own
        go_to(page, "reasoning")
        page.fill("#reasoning-prompt", "t03 t17 t42")
        page.fill("#reasoning-new-tokens", "8")
        page.click("#reasoning-generate")
        wait_plot(page, "reasoning-profile", "d[0].x.length === 12", timeout=120_000)  # <bos> + 3 + 8 tokens
        generated = page.input_value("#text-input")
        ref = preplan_anchor(lens.capture(subject, generated)).frame
        drawn = plot_data(page, "reasoning-profile")
        assert drawn[1]["x"] == ref.loc[ref["preplan"], "pos"].tolist()
        assert drawn[3]["x"] == ref.loc[ref["anchor"], "pos"].tolist()
        fai = [None if v != v else v for v in ref["fai"].tolist()]  # NaN (no later token to attend) drawn as a gap
        assert [y is None for y in drawn[2]["y"]] == [v is None for v in fai]
        assert [y for y in drawn[2]["y"] if y is not None] == pytest.approx([v for v in fai if v is not None], abs=1e-6)
        assert not _visible(page, "#reasoning-profile-empty")

        # circuits: the drawn edges are the circuit's
        go_to(page, "circuits")
        page.fill("#circuits-pairs", "8")
        page.fill("#circuits-ig-steps", "0")
        page.click("#circuits-run")
        wait_plot(page, "circuits-graph", "t.includes('faithfulness')", timeout=120_000)
        circuit = ctx.jobs.get(make_key("circuit", subject.name, "induction", 8, 20, 0))
        drawn = plot_data(page, "circuits-graph")
        assert sorted(drawn[-1]["text"]) == sorted(circuit.nodes)
        edges = {(c[0][0], c[0][1]): c[0][2] for c in (t["customdata"] for t in drawn[:-1])}
        assert edges == pytest.approx({e: circuit.scores[e] for e in circuit.edges})
        _notified(page, "circuit done")

        # probes: accuracy and control by layer, as probe_layers computed them
        go_to(page, "probes")
        page.fill("#probes-examples", "32")
        page.click("#probes-run")
        wait_plot(page, "probes-curves", "d.length === 2", timeout=120_000)
        task, frame = ctx.jobs.get(make_key("probes", subject.name, "repeats", 32))
        drawn = plot_data(page, "probes-curves")
        assert task == "repeats"
        assert drawn[0]["y"] == pytest.approx(frame["accuracy"].tolist())
        assert drawn[1]["y"] == pytest.approx(frame["control_accuracy"].tolist())
        _notified(page, "probes done")

        # the dark theme redraws the figure in the dark template
        page.locator("#theme-switch").dispatch_event("click")  # a notification may cover the switch
        page.wait_for_function("() => document.querySelector('#probes-curves .js-plotly-plot')"
                               ".layout.plot_bgcolor === '#1f2023'")
        assert overlaps(page, "#page-probes") == []
        assert errors == [], errors
        page.close()

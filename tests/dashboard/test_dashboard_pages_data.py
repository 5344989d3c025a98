"""The Runs and Census pages: their numbers against lens' own, then both pages in a real browser.

Data, made once per module in the cheapest real way:
- runs: ``lens run`` of a 5 x 4 sweep (seed x edit list) on the induction organism, 8 test
  examples and 100 bootstrap resamples per run (20 complete runs, about 10 s), plus one run
  started and still ``running`` (this process) and one that failed, written by ``_db``'s own
  start/abandon calls, as an interrupted ``lens run`` leaves them.
- store: 20 prompts captured by ``lens.capture_dataset`` on the induction organism in shards
  of 8 (the last holds 4).
Plain-function tests compare what the pages show with ``list_runs``, ``compare_runs``,
``sweep_table`` and with statistics recomputed from the store's shards in torch. The browser
tests check the drawn figures hold the same numbers, the layout has no overlapping controls,
print the time the Runs page takes to list its runs (issue 17's goal: under 1 s; printed, not
asserted), and write screenshots of both pages in both themes (the light ones to docs/).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _browser import (SHOTS, browser, needs_browser, overlaps, plot_data, served, set_theme,  # noqa: F401
                      wait_plot, whole_page)

import lens
from lens.dashboard._saved_work import Census, Runs, describe_sweep, value_label
from lens.experiments import _db, compare_runs, list_runs, load_run, load_specs, run_sweep, sweep_table

pytestmark = pytest.mark.organism

OUT = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"  # both themes; the light ones to SHOTS
SWEEP_SPEC = """\
# Which edit hurts the induction task, and how much does it vary by seed?
name = "induction-edits-sweep"
model = "induction"
metrics = ["accuracy", "logit_diff"]

[task]
name = "induction"
calibration = 0
test = 8
period = 10
n_choices = 4

[eval]
bootstrap = 100

[sweep]
seed = [0, 1, 2, 3, 4]
edits = [[{ type = "scale_attention", layer = 1, factor = 0.5 }],
         [{ type = "scale_attention", layer = 1, factor = 2.0 }],
         [{ type = "ablate", layer = 0 }], [{ type = "ablate", layer = 1 }]]
"""
N_PROMPTS, SHARD = 20, 8


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs_db(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    spec = folder / "sweep.toml"
    spec.write_text(SWEEP_SPEC)
    db = folder / "runs.duckdb"
    run_sweep(load_specs(spec), db=db, progress=False, echo=None)
    # an unfinished run of this process (listed as running) and a failed one
    base = {"created": pd.Timestamp.now(), "model": "induction", "task": "induction", "seed": 9, "n_calibration": 0,
            "n_test": 8, "spec_path": str(spec), "spec_toml": 'name = "still-running"\n', "method": "edits",
            "spec_hash": "x", "sweep": "{}"}
    _db.start_run(db, {**base, "run_id": "zz-running", "name": "still-running"})
    _db.start_run(db, {**base, "run_id": "zz-failed", "name": "failed-run", "spec_toml": 'name = "failed-run"\n'})
    _db.abandon_run(db, "zz-failed", RuntimeError("out of memory"))
    return db


def _prompts() -> list[str]:
    rng = random.Random(7)
    out = []
    for _ in range(N_PROMPTS):
        r = [f"t{rng.randint(0, 40):02d}" for _ in range(rng.randint(3, 9))]
        out.append(" ".join(r + r))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> lens.Store:
    from lens.record._executor import make_executor
    from lens.store._store import capture_dataset

    folder = tmp_path_factory.mktemp("store")
    data = folder / "prompts.txt"
    data.write_text("\n".join(_prompts()) + "\n")
    return capture_dataset("induction", data, folder / "store", shard_size=SHARD,
                                executor=make_executor("local", progress=False), echo=lambda s: None)


@pytest.fixture(scope="module")
def shards_index(store) -> tuple[pd.DataFrame, dict[int, lens.Capture]]:
    """Per (input, layer, head) statistics recomputed here from the shards, in torch (not from the index files)."""
    from lens.analyzers._dormant import sink_scores

    rows, caps = [], {}
    for offset, cap in store.shards():
        caps[offset] = cap
        s = sink_scores(cap)  # [batch, layer, head]
        for b in range(cap.n_inputs):
            n = int(cap.lengths[b])
            for layer in range(cap.n_layers):
                for head in range(cap.n_heads):
                    rows.append({"input": offset + b, "layer": layer, "head": head, "tokens": n,
                                 "dormancy": float(s[b, layer, head]),
                                 "sink_mass": float(cap.stats["sink_mass"][b, layer, head, 1:n].double().mean()),
                                 "entropy": float(cap.stats["entropy"][b, layer, head, 1:n].double().mean())})
    return pd.DataFrame(rows), caps


# --- runs: plain functions ----------------------------------------------------------------------
def test_runs_table_equals_list_runs(runs_db):
    from lens.dashboard.pages import runs as page

    runs = Runs.of(runs_db)
    for metric in ("accuracy", "logit_diff"):
        rows, cols = page.table(runs, metric)
        want = list_runs(runs_db, metric=metric).set_index("run_id")
        got = pd.DataFrame(rows).set_index("run_id")
        assert len(got) == 22 and list(got.index) == list(want.index)  # newest first, as list_runs
        assert got["state"].to_dict() == want["status"].to_dict()
        for c in ("baseline", "edited", "delta", "delta_low", "delta_high"):
            g, w = got[c].astype(float).to_numpy(), want[c].astype(float).to_numpy()
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
            np.testing.assert_allclose(g[~np.isnan(g)], w[~np.isnan(w)], rtol=0, atol=0)
        # baseline and edited CIs as stored in the summary table, and the CI text the grid shows
        for rid in want.index[want["status"] == "complete"][:5]:
            s = load_run(runs_db, rid)["summary"].set_index(["metric", "condition"])
            for cond in ("baseline", "edited", "delta"):
                lo, hi = s.loc[(metric, cond), "ci_low"], s.loc[(metric, cond), "ci_high"]
                assert got.at[rid, f"{cond}_low"] == lo and got.at[rid, f"{cond}_high"] == hi
                assert got.at[rid, f"{cond}_ci"] == f"[{lo:.4g}, {hi:.4g}]"
    assert got.at["zz-running", "state"] == "running" and got.at["zz-failed", "state"] == "failed"
    running = next(r for r in rows if r["run_id"] == "zz-running")
    assert running["delta_ci"] is None and running["delta"] is None  # no results for a run that did not finish
    shown = [c["field"] for c in cols if not c.get("hide")]
    assert shown[:6] == ["spec", "model", "task", "method", "state", "baseline"] and "delta_ci" in shown


def test_compare_bars_equal_compare_runs(runs_db):
    from lens.dashboard.pages import runs as page

    runs = Runs.of(runs_db)
    listed = list_runs(runs_db)
    a, b = listed.loc[listed["status"] == "complete", "run_id"].iloc[[0, 5]]
    fig, note = page.compare(runs, [a, b])
    assert note is None
    table = compare_runs(runs_db, [a, b])
    traces = fig.to_dict()["data"]
    assert len(traces) == 2 * 2  # two runs x two metrics
    for t in traces:
        rid = a if t["legendgroup"] == a else b
        for cond, v, up, down in zip(t["x"], t["y"], t["error_y"]["array"], t["error_y"]["arrayminus"]):
            cell = table.loc[(t["meta"], cond), rid]  # "value [low, high]", 4 decimals
            want = [float(x) for x in cell.replace("[", " ").replace("]", " ").replace(",", " ").split()]
            assert [round(v, 4), round(v - down, 4), round(v + up, 4)] == pytest.approx(want, abs=1e-9)
    # exact, against the stored summary
    s = load_run(runs_db, a)["summary"].set_index(["metric", "condition"])
    t = next(t for t in traces if t["legendgroup"] == a and t["meta"] == "logit_diff")
    assert t["y"] == [s.loc[("logit_diff", c), "value"] for c in t["x"]]


def test_unfinished_runs_are_not_comparable(runs_db):
    from lens.dashboard.pages import runs as page

    runs = Runs.of(runs_db)
    done = list_runs(runs_db).query("status == 'complete'")["run_id"].iloc[0]
    for bad, state in (("zz-running", "running"), ("zz-failed", "failed")):
        fig, note = page.compare(runs, [done, bad])
        assert fig is None
        text = note.children
        assert bad in text and f"is {state}" in text and "Only complete runs can be compared" in text
    assert page.compare(runs, [done]) == (None, None)  # one run: nothing to compare yet


def test_sweep_heatmap_equals_sweep_table(runs_db):
    from lens.dashboard.pages import runs as page

    runs = Runs.of(runs_db)
    sweeps = runs.sweeps()
    assert len(sweeps) == 1 and sweeps.iloc[0]["keys"] == ["seed", "edits"] and sweeps.iloc[0]["runs"] == 20
    label = sweeps.iloc[0]["sweep"]
    fig = page.sweep_figure(runs, label, "accuracy", "delta", "edits", "seed")
    heat = fig.to_dict()["data"][0]
    assert heat["y"] == ["0", "1", "2", "3", "4"] and len(heat["x"]) == 4
    ids = list_runs(runs_db).query("status == 'complete'")["run_id"].tolist()
    want = sweep_table(runs_db, ids)
    want = want[(want["metric"] == "accuracy") & (want["condition"] == "delta")]
    for _, r in want.iterrows():
        i = heat["y"].index(str(json.loads(r["sweep.seed"])))
        j = heat["x"].index(value_label(json.loads(r["sweep.edits"])))
        assert heat["z"][i][j] == r["value"]
        assert f"{r['run_id']}: {r['value']:.4g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]" in heat["customdata"][i][j]
    # the edits axis reads as edits, not JSON
    assert "ablate L1" in heat["x"] and "scale_attention L1 x0.5" in heat["x"]
    # averaged over a key that is not on an axis: x = y = one key gives one row
    one = page.sweep_figure(runs, label, "accuracy", "baseline", "edits", "edits").to_dict()["data"][0]
    assert len(one["z"]) == 1


def test_spec_view_shows_the_runs_toml(runs_db):
    from lens.dashboard.pages import runs as page

    runs = Runs.of(runs_db)
    rid = list_runs(runs_db).query("status == 'complete'")["run_id"].iloc[0]
    title, block = page.spec_view(runs, rid)
    run = load_run(runs_db, rid)["run"]
    assert rid in title and block.code.endswith(run["spec_toml"])
    assert block.code.startswith(f"# this run of the sweep: {describe_sweep(run['sweep'])}")
    title, block = page.spec_view(runs, "zz-failed")  # unfinished runs still show their spec
    assert "failed" in title and 'name = "failed-run"' in block.code


def test_run_list_follows_the_file(runs_db, tmp_path):
    """A run that starts while the page is open is listed on the next read (the cache watches the file)."""
    from lens.dashboard.pages import runs as page

    db = tmp_path / "copy.duckdb"
    shutil.copyfile(runs_db, db)
    runs = Runs(db)
    assert len(page.table(runs, "accuracy")[0]) == 22
    _db.start_run(db, {"run_id": "zz-new", "created": pd.Timestamp.now(), "name": "new-run", "model": "induction",
                       "task": "induction", "spec_toml": "", "sweep": "{}"})
    rows, _ = page.table(runs, "accuracy")
    assert len(rows) == 23 and rows[0]["run_id"] == "zz-new" and rows[0]["state"] == "running"


def test_pages_say_what_is_missing():
    from lens.dashboard._context import Context
    from lens.dashboard.pages import census, runs

    ctx = Context(subject=None)
    assert "--runs FILE" in str(runs.layout(ctx).children.children)
    assert "--store DIR" in str(census.layout(ctx).children.children)
    ctx.runs = Path("no-such.duckdb")
    assert "does not exist yet" in str(runs.layout(ctx).children.children)


# --- census: plain functions --------------------------------------------------------------------
def test_dormant_share_grid_equals_shards(store, shards_index):
    from lens.dashboard.pages import census as page

    frame, _ = shards_index
    fig = page.dormant_grid(Census(store))
    z = np.array(fig.to_dict()["data"][0]["z"], dtype=float)
    want = frame.assign(d=frame["dormancy"] >= 0.5).groupby(["layer", "head"])["d"].mean().unstack().to_numpy()
    np.testing.assert_allclose(z, want, rtol=0, atol=1e-12)
    assert z.shape == (2, frame["head"].max() + 1) and 0 < z.sum()


def test_distributions_equal_pandas(store, shards_index):
    from lens.dashboard.pages import census as page

    frame, _ = shards_index
    census = Census(store)
    for stat in ("sink_mass", "entropy", "dormancy"):
        box = page.distributions(census, stat, "1").to_dict()["data"][0]
        g = frame[frame["layer"] == 1].groupby("head")[stat]
        assert box["x"] == [f"L1 H{h}" for h in g.groups]
        for key, want in (("q1", g.quantile(0.25)), ("median", g.median()), ("q3", g.quantile(0.75)),
                          ("lowerfence", g.min()), ("upperfence", g.max()), ("mean", g.mean())):
            np.testing.assert_allclose(box[key], want.to_numpy(), rtol=1e-6, atol=1e-7, err_msg=f"{stat} {key}")
    every = page.distributions(census, "entropy", page.ALL).to_dict()["data"][0]
    assert len(every["x"]) == frame.groupby(["layer", "head"]).ngroups


def test_outliers_are_the_true_extremes(store, shards_index):
    from lens.dashboard.pages import census as page

    frame, _ = shards_index
    census = Census(store)
    h = frame[(frame["layer"] == 1) & (frame["head"] == 0)].set_index("input")["sink_mass"]
    z = (h - h.mean()) / h.std(ddof=1)
    for kind, want in (("highest", h.sort_values(ascending=False, kind="stable")),
                       ("lowest", h.sort_values(kind="stable")),
                       ("|z| largest", z.abs().sort_values(ascending=False, kind="stable"))):
        rows, _ = page.outliers(census, "sink_mass", "1", "0", kind)
        got = [r["input"] for r in rows]
        assert len(got) == page.OUTLIERS_K
        assert sorted(h[got].round(6)) == sorted(h[want.index[:page.OUTLIERS_K]].round(6)), kind
        for r in rows:
            assert r["sink_mass"] == pytest.approx(h[r["input"]], rel=1e-6)
            assert r["z"] == pytest.approx(z[r["input"]], rel=1e-5, abs=1e-6)


def test_strip_of_an_outlier_is_its_shard_row(store, shards_index):
    from lens.dashboard.pages import census as page

    frame, caps = shards_index
    census = Census(store)
    rows, _ = page.outliers(census, "entropy", "1", "1", "highest")
    top = rows[0]["input"]
    fig, caption = page.strip(census, top, "entropy", "1", "1")
    cap = caps[(top // SHARD) * SHARD]
    b = top % SHARD
    n = int(cap.lengths[b])
    z = np.array([v for row in fig.to_dict()["data"][0]["z"] for v in row], dtype=float)[:n]
    want = cap.stats["entropy"][b, 1, 1, :n].double().numpy()
    assert np.isnan(z[0]) and np.allclose(z[1:], want[1:])
    assert np.nanmean(z) == pytest.approx(rows[0]["entropy"], rel=1e-5)  # the index value is their mean
    assert f"input {top} ({n} tokens)" in caption
    with pytest.raises(ValueError, match="not in this store"):
        census.strip(N_PROMPTS, 0, 0, "entropy")


# --- both pages in a browser --------------------------------------------------------------------
def _shots(page, name: str) -> None:
    """Screenshots of the shown page in the light and the dark theme; the light one also to docs/screenshots."""
    OUT.mkdir(parents=True, exist_ok=True)
    for theme in ("light", "dark"):
        set_theme(page, theme == "dark")
        page.wait_for_timeout(500)  # figures redraw in the theme's template
        assert overlaps(page) == [], f"overlapping controls on {name} ({theme})"
        whole_page(page, OUT / f"{name}-{theme}.png")
    set_theme(page, False)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OUT / f"{name}-light.png", SHOTS / f"{name}.png")


ROWS_AT_LEAST = """() => { try { return dash_ag_grid.getApi('%s').getDisplayedRowCount() >= %d; }
                       catch (e) { return false; } }"""


def _grid_count(page, grid: str) -> int:
    return page.evaluate(f"() => dash_ag_grid.getApi('{grid}').getDisplayedRowCount()")


def _tick(page, grid: str, row_id: str) -> None:
    page.locator(f'#{grid} .ag-row[row-id="{row_id}"] input.ag-checkbox-input').first.click()


@pytest.fixture(scope="module")
def site(runs_db, store, browser):
    """One app with both the runs database and the store (no model), served, and one browser tab on it."""
    from lens import dashboard
    app = dashboard.create_app(None, runs=runs_db, store=store.path)
    with served(app) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            yield url, page
        finally:
            page.close()


@pytest.mark.browser
@needs_browser
def test_runs_page_in_browser(runs_db, site):
    from lens.dashboard.pages import runs as page_mod

    url, page = site
    runs = Runs.of(runs_db)
    listed = list_runs(runs_db)
    done = listed.loc[listed["status"] == "complete", "run_id"].tolist()
    t0 = time.perf_counter()
    page.goto(url + "/runs")  # a cold open: the app's scripts load, then the page's callbacks run
    page.wait_for_function(ROWS_AT_LEAST % ("runs-table", 20), timeout=30_000)
    cold = time.perf_counter() - t0
    page.goto(url)  # and from another page of the open app, as a user gets there
    page.wait_for_selector("#nav-runs")
    page.wait_for_load_state("networkidle")
    # once the app has settled (no callback running), as when a user clicks: a click during the load's own
    # renders waits for them (Playwright waits until the link can take the click) and timed the load too
    page.wait_for_function("() => !document.querySelector('[data-dash-is-loading=\"true\"]')")
    page.wait_for_timeout(1000)
    t0 = time.perf_counter()
    page.click("#nav-runs")
    page.wait_for_selector("#page-runs", state="visible")  # the shell's routing
    shown = time.perf_counter() - t0
    page.wait_for_function(ROWS_AT_LEAST % ("runs-table", 20), timeout=30_000)
    warm = time.perf_counter() - t0
    print(f"\nRuns page: {_grid_count(page, 'runs-table')} runs listed {warm:.3f} s after clicking Runs "
          f"(goal < 1 s): the page shown after {shown:.3f} s, its rows {warm - shown:.3f} s later; "
          f"{cold:.3f} s after opening /runs in a new tab (the app's scripts loaded too)")
    assert _grid_count(page, "runs-table") == len(listed)

    # the sweep heatmap holds the sweep's numbers
    wait_plot(page, "runs-sweep")
    heat = plot_data(page, "runs-sweep")[0]
    label = runs.sweeps().iloc[0]["sweep"]
    want = page_mod.sweep_figure(runs, label, "accuracy", "delta", "seed", "edits").to_dict()["data"][0]
    assert heat["z"] == want["z"] and heat["x"] == want["x"]

    # a click on a row shows that run's spec, also for a run that failed
    page.locator('#runs-table .ag-row[row-id="zz-failed"] [col-id="spec"]').first.click()
    page.wait_for_function("() => (document.querySelector('#runs-spec') || {}).textContent?.includes('failed-run')")
    assert "failed" in page.inner_text("#runs-spec-title")

    # two complete runs compared: the bars hold their summaries
    _tick(page, "runs-table", done[0])
    _tick(page, "runs-table", done[3])
    wait_plot(page, "runs-compare", "d.length == 4")
    bars = plot_data(page, "runs-compare")
    frame = runs.compare([done[0], done[3]])
    for t in bars:
        rid = t["legendgroup"]
        g = frame[(frame["run_id"] == rid) & (frame["metric"] == t["meta"])].set_index("condition")
        assert t["y"] == pytest.approx([g.at[c, "value"] for c in t["x"]], abs=0)
    page.wait_for_function("() => (document.querySelector('#runs-spec') || {}).textContent?.includes('[sweep]')")
    assert overlaps(page) == []
    _shots(page, "runs")

    # an unfinished run: refused by name, no bars
    _tick(page, "runs-table", "zz-running")
    page.wait_for_function("() => (document.querySelector('#runs-compare-note') || {}).textContent"
                           "?.includes('zz-running')")
    assert "Only complete runs can be compared" in page.inner_text("#runs-compare-note")
    assert not page.is_visible("#runs-compare")


@pytest.mark.browser
@needs_browser
def test_census_page_in_browser(store, shards_index, site):
    from lens.dashboard.pages import census as page_mod

    url, page = site
    frame, _ = shards_index
    census = Census(store)
    if page.url.startswith(url):
        page.click("#nav-census")
    else:  # this test alone
        page.goto(url + "/census")
    wait_plot(page, "census-dormant-grid")
    grid = np.array(plot_data(page, "census-dormant-grid")[0]["z"], dtype=float)
    want = frame.assign(d=frame["dormancy"] >= 0.5).groupby(["layer", "head"])["d"].mean().unstack().to_numpy()
    np.testing.assert_allclose(grid, want, atol=1e-12)
    wait_plot(page, "census-distributions")
    box = plot_data(page, "census-distributions")[0]
    ref = page_mod.distributions(census, "dormancy", page_mod.ALL).to_dict()["data"][0]
    assert box["median"] == pytest.approx(ref["median"], abs=0) and box["x"] == ref["x"]

    # click head L1 H1 in the grid: its outliers are listed; click the first: its token strip
    page.evaluate("""() => { const g = document.querySelector('#census-dormant-grid .js-plotly-plot');
                             g.emit('plotly_click', {points: [{x: 1, y: 1, curveNumber: 0}]}); }""")
    page.wait_for_function("() => document.querySelector('#census-head').value === 'H1'")
    page.wait_for_function(ROWS_AT_LEAST % ("census-outliers", 1))
    rows, _ = page_mod.outliers(census, "dormancy", "1", "1", "|z| largest")
    first = rows[0]["input"]
    page.wait_for_selector(f'#census-outliers .ag-row[row-id="{first}"]')
    page.locator(f'#census-outliers .ag-center-cols-container .ag-row[row-id="{first}"]').click()
    wait_plot(page, "census-strip")
    z = np.array([v for row in plot_data(page, "census-strip")[0]["z"] for v in row], dtype=float)
    assert np.nanmean(z[~np.isnan(z)]) == pytest.approx(rows[0]["dormancy"], rel=1e-5)
    assert f"input {first}" in page.inner_text("#census-strip-note")
    assert overlaps(page) == []
    _shots(page, "census")


def test_probes_page_shows_the_spread_over_folds():
    """The probes page draws each layer's accuracy with its standard deviation over the CV folds."""
    import types

    from lens.dashboard.pages import probes

    frame = pd.DataFrame({"layer": [-1, 0, 1], "accuracy": [0.5, 0.8, 0.9], "accuracy_std": [0.05, 0.02, 0.01],
                          "control_accuracy": [0.5, 0.6, 0.6], "selectivity": [0.0, 0.2, 0.3],
                          "selectivity_std": [0.04, 0.03, 0.02], "majority": [0.5, 0.5, 0.5]})
    fig = probes.render(types.SimpleNamespace(jobs={"k": ("quotes", frame)}), "k")
    score = fig.data[0]
    assert list(score.y) == [0.5, 0.8, 0.9] and list(score.error_y.array) == [0.05, 0.02, 0.01]
    assert "best selectivity 0.30 +- 0.02 at layer 1" in fig.layout.title.text

"""Runs: every run in the DuckDB of ``lens run`` (``--runs FILE``), two runs compared with their CIs,
a sweep as a heatmap over two swept values, and the spec of a run as TOML.

The queries live in ``lens.dashboard._saved_work.Runs``; the render functions below are plain
functions of (Runs, picks) so the tests call them without a browser.
"""

from __future__ import annotations

import threading

import dash
import dash_mantine_components as dmc
import pandas as pd
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from lens import viz
from lens.dashboard import _ui as ui
from lens.dashboard import ids
from lens.dashboard._context import Context, visible
from lens.dashboard._saved_work import COMPLETE, CONDITIONS, Runs, describe_sweep, sweep_grid

PATH = "/runs"
NAME = "Runs"

NO_DB = ("No runs database: start lens dashboard --runs FILE (lens run writes runs.duckdb; the default is "
         "./runs.duckdb when it exists).")
COMPARE_EMPTY = "tick two complete runs in the table to compare them"
PAGE_SIZE = 20
MAX_COMPARED = 6  # bars stay readable up to this many runs side by side


def layout(ctx: Context) -> html.Div:
    if ctx.runs is None or not ctx.runs.is_file():
        msg = NO_DB if ctx.runs is None else f"{ctx.runs} does not exist yet: run lens run SPEC --db {ctx.runs}."
        return html.Div(dmc.Alert(msg, title="No runs", color="gray", variant="light", id=ids.RU_NOTE))
    runs = Runs.of(ctx.runs)
    try:  # the list is in the page itself, so it shows at once (from the cache _warm fills at start)
        stamp = [runs.stamp(), "accuracy"]  # before reading: a run written meanwhile is read on the next visit
        rows, cols = table(runs, "accuracy")
        metrics = runs.metrics() or ["accuracy"]
    except Exception:  # noqa: BLE001 - locked or damaged: the page's callback reads it again and says why
        rows, cols, metrics, stamp = [], [], ["accuracy"], None
    grid = _runs_grid()
    grid.rowData, grid.columnDefs = rows, cols
    return html.Div([
        dcc.Store(id=ids.RU_STAMP, data=stamp),
        ui.card(f"Runs in {ctx.runs}", dmc.Group([
            ui.select(ids.RU_METRIC, metrics, value="accuracy", label="metric", width=200),
            dmc.Text(id=ids.RU_NOTE, size="xs", c="dimmed", mt=24,
                     children="tick runs to compare them; click a row to see its spec"),
        ], align="flex-start", mb="xs"), grid),
        dmc.SimpleGrid([
            ui.card("Compare runs", html.Div(id=ids.RU_COMPARE_NOTE),
                    ui.graph(ids.RU_COMPARE, 380, empty=COMPARE_EMPTY, responsive=True)),
            ui.card("Spec", dmc.Text("click a run to see the spec it ran", id=ids.RU_SPEC_TITLE, size="sm",
                                     c="dimmed", mb="xs"),
                    html.Div(id=ids.RU_SPEC)),
        ], cols={"base": 1, "lg": 2}, spacing="md"),
        ui.card("Sweep", dmc.Group([
            ui.select(ids.RU_SWEEP_PICK, [], label="sweep", width=340),
            ui.select(ids.RU_SWEEP_X, [], label="x: swept key", width=180),
            ui.select(ids.RU_SWEEP_Y, [], label="y: swept key", width=180),
            ui.select(ids.RU_CONDITION, CONDITIONS, value="delta", label="condition", width=140),
        ], align="flex-start", mb="xs"), ui.graph(ids.RU_SWEEP, 420, empty="no sweep in this database yet "
                                                  "(a spec with a [sweep] table writes one)", responsive=True)),
    ])


def _runs_grid():
    # autoHeight: every row of a page is in the page, none hidden under the grid's own scroll (rows
    # clipped there still count as boxes, and land on the cards below)
    grid = ui.table(ids.RU_TABLE)
    grid.getRowId = "params.data.run_id"  # keeps the ticks when the rows are refreshed
    grid.style = {"width": "100%"}
    grid.dashGridOptions = {**grid.dashGridOptions, "domLayout": "autoHeight", "paginationPageSize": PAGE_SIZE,
                            "paginationPageSizeSelector": [10, PAGE_SIZE, 50, 100], "rowSelection": {
                                "mode": "multiRow", "checkboxes": True, "headerCheckbox": False,
                                "enableClickSelection": False}}
    return grid


# --- plain render functions ---------------------------------------------------------------------
def _ci(lo, hi) -> str | None:
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return None
    return f"[{lo:.4g}, {hi:.4g}]"


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def table(runs: Runs, metric: str) -> tuple[list[dict], list[dict]]:
    """(rowData, columnDefs) of the run list: every run, newest first, with ``metric`` and its CIs."""
    df = runs.table(metric)
    for c in ("baseline", "edited", "delta"):
        df[f"{c}_ci"] = [_ci(lo, hi) for lo, hi in zip(df[f"{c}_low"], df[f"{c}_high"])]
    shown = ["spec", "model", "task", "method", "state", "baseline", "baseline_ci", "edited", "edited_ci",
             "delta", "delta_ci", "n", "sweep", "created", "run_id"]
    cols = ui.columns(df[shown], pinned=())
    for d in cols:
        if d["field"].endswith("_ci"):
            d["headerName"] = f"{d['field'][:-3]} 95% CI"
            d["sortable"] = False
        if d["field"] == "state":
            d["cellStyle"] = {"styleConditions": [
                {"condition": f"params.value != '{COMPLETE}'", "style": {"color": "#e8590c", "fontWeight": 600}}]}
            d["width"] = 120
        if d["field"] == "spec":
            d["pinned"] = "left"
    for d in cols:  # as wide as the content, set here: ag-grid cannot measure a grid on a hidden page
        longest = max([len(str(d.get("headerName", d["field"])))] + [len(_cell(v)) for v in df[d["field"]]])
        d["width"] = int(min(320, 7.5 * longest + 48))
    hidden = [c for c in df.columns if c not in shown]
    cols += [{"field": c, "hide": True} for c in hidden]
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in ui.rows(df)]
    return rows, cols  # (ui.rows leaves NaN in text columns; JSON has no NaN)


def compare(runs: Runs, run_ids: list[str], theme: str | None = None):
    """(figure or None, note) comparing the ticked runs; a run that is not complete is refused by name."""
    if len(run_ids) < 2:
        return None, None
    note = None
    if len(run_ids) > MAX_COMPARED:
        note = dmc.Text(f"{len(run_ids)} runs ticked; the first {MAX_COMPARED} are shown", size="xs", c="dimmed")
        run_ids = run_ids[:MAX_COMPARED]
    try:
        frame = runs.compare(run_ids)
    except ValueError as err:
        return None, dmc.Alert(f"{err}. Only complete runs can be compared: untick it.",
                               title="Not comparable", color="orange", variant="light")
    listing = runs.table("accuracy").set_index("run_id")
    labels = {r: f"{listing.at[r, 'spec']} ({r[-6:]})" if r in listing.index else r for r in run_ids}
    return viz.run_comparison(frame, labels=labels), note


def sweep_choices(runs: Runs) -> list[tuple[str, str]]:
    sw = runs.sweeps()
    return [(s, s) for s in sw["sweep"]]


def sweep_keys(runs: Runs, sweep: str | None) -> list[str]:
    sw = runs.sweeps()
    row = sw[sw["sweep"] == sweep]
    return list(row.iloc[0]["keys"]) if len(row) else []


def _sweep_name(runs: Runs, sweep: str) -> str:
    sw = runs.sweeps()
    return str(sw.loc[sw["sweep"] == sweep, "name"].iloc[0])


def sweep_figure(runs: Runs, sweep: str | None, metric: str, condition: str, x: str | None, y: str | None):
    """The sweep's heatmap over swept keys x and y (one key: a single row), or None."""
    keys = sweep_keys(runs, sweep)
    if not keys:
        return None
    x = x if x in keys else keys[0]
    y = y if y in keys else (keys[1] if len(keys) > 1 else keys[0])
    cells = runs.sweep_cells(sweep, metric, condition)
    if x == y:  # one swept key (or the same picked twice): one row
        cells = cells.assign(_=metric)
        y = "_"
    grid = sweep_grid(cells, x, y)
    return viz.sweep_heatmap(grid, x=x, y="" if y == "_" else y, metric=f"{metric} ({condition})",
                             title=f"{_sweep_name(runs, sweep)}: {metric} ({condition}) over {x}"
                                   + ("" if y == "_" else f" x {y}")
                                   + (f", mean over {', '.join(grid['others'])}" if grid["others"] else ""))


def spec_view(runs: Runs, run_id: str | None):
    """(title, TOML block) of one run's spec."""
    if not run_id:
        return "click a run to see the spec it ran", None
    try:
        text, row = runs.spec(run_id)
    except ValueError as err:  # the run was removed from the file since the list was drawn
        return str(err), None
    head = f"{row['name']} ({run_id}, {row['status']})"
    if row.get("spec_path"):
        head += f" from {row['spec_path']}"
    if row.get("sweep") and row["sweep"] not in ("{}", ""):
        text = f"# this run of the sweep: {describe_sweep(row['sweep'])}\n" + text
    return head, dmc.CodeHighlight(code=text or "# no spec text stored", language="toml", id=ids.RU_SPEC + "-code")


def _warm(runs: Runs) -> None:
    """Read the run list once at start, so the first visit to the page finds it cached."""
    try:
        runs.metrics(), runs.table("accuracy"), runs.sweeps()
    except Exception:  # noqa: BLE001 - a locked or damaged file: the page's own callback will say what is wrong
        pass


def register(app, ctx: Context) -> None:
    if ctx.runs is None or not ctx.runs.is_file():
        return
    runs = Runs.of(ctx.runs)
    threading.Thread(target=_warm, args=(runs,), daemon=True, name="lens-dashboard-runs").start()

    @app.callback(Output(ids.RU_TABLE, "rowData"), Output(ids.RU_TABLE, "columnDefs"),
                  Output(ids.RU_METRIC, "data"), Output(ids.RU_STAMP, "data"),
                  Input(ids.URL, "pathname"), Input(ids.RU_METRIC, "value"), State(ids.RU_STAMP, "data"))
    def _table(path, metric, shown):
        """Redraw the list only when the file or the metric changed since it was drawn (a redraw loses
        the grid's scroll and sort)."""
        if not visible(path, PATH):
            raise PreventUpdate
        metric = metric or "accuracy"
        now = [runs.stamp(), metric]
        if shown == now:
            raise PreventUpdate
        rows, cols = table(runs, metric)  # (a list with a run in progress is read again every LIVE_TTL_S)
        return rows, cols, [{"value": m, "label": m} for m in runs.metrics() or ["accuracy"]], now

    @app.callback(Output(ids.RU_COMPARE, "figure"), Output(ids.RU_COMPARE, "style"),
                  Output(ids.RU_COMPARE + "-empty", "style"), Output(ids.RU_COMPARE_NOTE, "children"),
                  Input(ids.RU_TABLE, "selectedRows"), Input(ids.THEME, "data"), Input(ids.URL, "pathname"))
    def _compare(selected, theme, path):  # (the URL: a theme switched on another page applies on return)
        if not visible(path, PATH):
            raise PreventUpdate
        fig, note = compare(runs, [r["run_id"] for r in selected or []], theme)
        return (*ui.shown(fig, theme), ui.empty_style(fig), note)

    @app.callback(Output(ids.RU_SPEC_TITLE, "children"), Output(ids.RU_SPEC, "children"),
                  Input(ids.RU_TABLE, "cellClicked"), Input(ids.RU_TABLE, "selectedRows"),
                  State(ids.URL, "pathname"), prevent_initial_call=True)
    def _spec(clicked, selected, path):
        if not visible(path, PATH):
            raise PreventUpdate
        if f"{ids.RU_TABLE}.cellClicked" in dash.ctx.triggered_prop_ids and clicked and clicked.get("rowId"):
            run_id = clicked["rowId"]
        elif selected:
            run_id = selected[-1]["run_id"]
        else:
            raise PreventUpdate
        return spec_view(runs, run_id)

    @app.callback(Output(ids.RU_SWEEP_PICK, "data"), Output(ids.RU_SWEEP_PICK, "value"),
                  Input(ids.URL, "pathname"), State(ids.RU_SWEEP_PICK, "value"))
    def _sweeps(path, current):
        if not visible(path, PATH):
            raise PreventUpdate
        choices = sweep_choices(runs)
        values = [v for v, _ in choices]
        data = [{"value": v, "label": label} for v, label in choices]
        return data, (current if current in values else (values[0] if values else None))

    @app.callback(Output(ids.RU_SWEEP_X, "data"), Output(ids.RU_SWEEP_X, "value"),
                  Output(ids.RU_SWEEP_Y, "data"), Output(ids.RU_SWEEP_Y, "value"),
                  Input(ids.RU_SWEEP_PICK, "value"))
    def _axes(sweep):
        keys = sweep_keys(runs, sweep)
        data = [{"value": k, "label": k} for k in keys]
        return (data, keys[0] if keys else None, data,
                (keys[1] if len(keys) > 1 else keys[0]) if keys else None)

    @app.callback(Output(ids.RU_SWEEP, "figure"), Output(ids.RU_SWEEP, "style"),
                  Output(ids.RU_SWEEP + "-empty", "style"),
                  Input(ids.RU_SWEEP_PICK, "value"), Input(ids.RU_SWEEP_X, "value"), Input(ids.RU_SWEEP_Y, "value"),
                  Input(ids.RU_METRIC, "value"), Input(ids.RU_CONDITION, "value"), Input(ids.THEME, "data"),
                  Input(ids.URL, "pathname"))
    def _sweep(sweep, x, y, metric, condition, theme, path):
        if not visible(path, PATH):
            raise PreventUpdate
        fig = sweep_figure(runs, sweep, metric or "accuracy", condition or "delta", x, y)
        return (*ui.shown(fig, theme), ui.empty_style(fig))

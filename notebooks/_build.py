"""Keep the worked-analysis notebooks in step with their scripts, and run them.

Each notebook ``notebooks/0N_name.ipynb`` is paired by jupytext (``jupytext.toml`` here) with the
percent script ``0N_name.py`` beside it: ``# %%`` starts a code cell, ``# %% [markdown]`` a
markdown cell. The script is the source to edit, lint and review; the .ipynb holds the same cells
plus the outputs of one top-to-bottom run, so that a reader on GitHub sees the numbers and
figures without running anything. JupyterLab with jupytext installed keeps the pair in step as
you save; from the shell:

* ``python notebooks/_build.py`` writes each script's cells into its notebook (``jupytext --sync``
  with the script taken as the source whatever the timestamps). Unchanged cells keep their
  outputs; a notebook whose cells changed must then be executed again.
* ``python notebooks/_build.py --execute [01 02 ...]`` runs the chosen notebooks (all by default)
  from their scripts, top to bottom in a fresh kernel, and writes them with their outputs. Takes
  minutes: SmolLM2 and the organisms come from the workbench cache (``LENS_CACHE``) after the
  first run.
* ``python notebooks/_build.py --from test-output/notebooks [01 ...]`` takes the copies that
  ``pytest tests/test_notebooks.py`` executed instead of running them again.
* ``python notebooks/_build.py --check`` fails when a notebook's cells differ from its script or
  its outputs come from other cells (``tests/test_notebooks.py`` checks the same).

An execution records a digest of the cells it ran in the notebook's metadata (``EXECUTED``); the
check compares it with the cells, so outputs left over from before an edit are caught.

Figures are shown with ``viz.show`` (an interactive figure plus a PNG beside it, see
``lens/viz/_show.py``). An executed kernel embeds plotly.js (4.8 MB) once per notebook so that
``jupyter nbconvert --execute --to html`` works offline; the committed copies load it from
plotly's CDN instead (``commit_copy``), which keeps them small: GitHub shows the PNGs, nbviewer
fetches the library, and JupyterLab shows the PNGs until the notebook is trusted or rerun.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import sys
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs
from jupytext.config import load_jupytext_config
from jupytext.paired_paths import paired_paths
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = sorted(p.with_suffix(".ipynb").name for p in HERE.glob("[0-9][0-9]_*.py"))  # one per script
CELL_TIMEOUT = 900  # seconds per cell: the 8K capture of notebook 06 is the longest
EXECUTED = "executed_cells_sha256"  # notebook metadata: the digest of the cells that made the outputs
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PAIRING = load_jupytext_config(str(HERE))  # jupytext.toml: ipynb,py:percent


def read_script(notebook: Path) -> nbformat.NotebookNode:
    """The cells of the script paired with ``notebook`` (as ``jupytext.toml`` pairs them)."""
    _, (script, fmt) = paired_paths(str(notebook), "ipynb", PAIRING.default_formats(str(notebook)))
    return jupytext.read(script, fmt=fmt)


def cell_sources(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """What must match between a notebook and its script: each cell's type and text."""
    return [(c.cell_type, c.source) for c in nb.cells]


def digest(nb: nbformat.NotebookNode) -> str:
    return hashlib.sha256(json.dumps(cell_sources(nb)).encode()).hexdigest()


def paired(notebook: Path) -> nbformat.NotebookNode:
    """The notebook with its script's cells: outputs, cell ids and metadata of unchanged cells kept."""
    nb = read_script(notebook)
    if notebook.is_file():
        nb = combine_inputs_with_outputs(nb, nbformat.read(notebook, as_version=4))
    else:
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{notebook.stem[:2]}-{i:02d}"
    nb.metadata.pop("jupytext", None)  # the pairing lives in jupytext.toml
    nb.metadata.setdefault("kernelspec", KERNELSPEC)
    return nb


def fresh(notebook: Path) -> nbformat.NotebookNode:
    """The notebook to execute: its script's cells, no outputs."""
    nb = paired(notebook)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nb.metadata.pop(EXECUTED, None)
    return nb


def execute(nb: nbformat.NotebookNode, *, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh kernel, in place; a failing cell raises ``CellExecutionError``.

    The kernel runs in ``notebooks/`` with this checkout first on ``PYTHONPATH`` and the caller's
    environment otherwise (``LENS_CACHE`` included, so cached weights and organisms are reused).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(HERE)}})
    client.execute(env=env)
    nb.metadata[EXECUTED] = digest(nb)
    return nb


def final_bar_text(nb: nbformat.NotebookNode, model_id: str) -> str | None:
    """A tqdm widget bar's last state as text ("Loading weights: 100%|##########| 272/272 [...]").

    An output's ``text/plain`` is the bar as first drawn (0 %); its last state lives only in the
    widget state that nbclient saves in the notebook's metadata. Returns "" for a bar hidden when
    it closed (tqdm's ``leave=False``), None when the output is not a tqdm bar.
    """
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})

    def model(ref: str) -> dict:
        return state.get(ref.removeprefix("IPY_MODEL_"), {})

    box = model(model_id)
    if box.get("model_name") != "HBoxModel":
        return None
    if model(box["state"].get("layout", "")).get("state", {}).get("visibility") == "hidden":
        return ""
    parts = []
    for ref in box["state"].get("children", []):
        child = model(ref)
        value = child.get("state", {})
        if child.get("model_name") == "HTMLModel":
            parts.append(html.unescape(value.get("value", "")).replace("\u2007", " "))  # tqdm pads with figure spaces
        elif child.get("model_name") == "FloatProgressModel":
            filled = round(10 * value.get("value", 0) / (value.get("max") or 1))
            parts.append("|" + "#" * filled + " " * (10 - filled) + "|")
    return "".join(parts)


def commit_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The executed notebook as committed.

    The embedded plotly.js is replaced by a CDN <script> (4.8 MB less per notebook). Progress
    bars are shown as a reader without widgets (GitHub) would want them: a bar hidden when it
    closed is left out, as it is in a live notebook, and the others' plain-text form shows where
    they ended, not their first frame (0 %).
    """
    # Here, not at the top: lens imports torch (seconds), which syncing and --check do without.
    from lens.viz._show import LIBRARY, OUTPUT_KEY, plotlyjs_cdn_html

    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get(OUTPUT_KEY) == LIBRARY:
                out["data"]["text/html"] = plotlyjs_cdn_html()
            if WIDGET_VIEW in out.get("data", {}):
                text = final_bar_text(nb, out["data"][WIDGET_VIEW]["model_id"])
                if text == "":
                    continue
                if text:
                    out["data"]["text/plain"] = text
            kept.append(out)
        if cell.cell_type == "code":
            cell.outputs = kept
    return nb


def problems(nb: nbformat.NotebookNode, script: nbformat.NotebookNode) -> str | None:
    """Why ``nb`` is not a committable run of ``script``'s cells, or None."""
    if cell_sources(nb) != cell_sources(script):
        return "cells differ from the script"
    if nb.metadata.get(EXECUTED) != digest(nb):
        return "outputs are not from a run of these cells"
    code = [c for c in nb.cells if c.cell_type == "code"]
    if any(c.execution_count is None or any(o.output_type == "error" for o in c.outputs) for c in code):
        return "the run stopped at a failing cell"
    return None


def write(path: Path, nb: nbformat.NotebookNode) -> None:
    path.write_text(nbformat.writes(nb) + "\n")


def main(argv: list[str]) -> int:
    check, run = "--check" in argv, "--execute" in argv
    adopt = Path(argv[argv.index("--from") + 1]) if "--from" in argv else None
    chosen = [a for a in argv if not a.startswith("--") and (adopt is None or Path(a) != adopt)]
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        if (adopt or run) and chosen and not any(name.startswith(c) for c in chosen):
            continue
        if run:
            print(f"executing {name} ...", flush=True)
            write(path, commit_copy(execute(fresh(path))))
            continue
        current = paired(path)
        if adopt is not None:
            executed = nbformat.read(adopt / name, as_version=4)
            if why := problems(executed, current):
                stale.append(f"{name} ({why})")
                continue
            write(path, commit_copy(executed))
            print(f"took {name} from {adopt}")
            continue
        committed = nbformat.read(path, as_version=4) if path.is_file() else None
        if not check and current != committed:
            write(path, committed := current)
            print(f"wrote {name} from its script")
        if why := "no notebook" if committed is None else problems(committed, current):
            stale.append(f"{name} ({why})")
    if stale:
        print("not a full run of its script (python notebooks/_build.py --execute NN):", "; ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

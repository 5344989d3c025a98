"""Every notebook in notebooks/ runs top to bottom (nbclient); a failing cell fails the build.

Each notebook runs in its own fresh kernel with ``cwd = notebooks/`` and the caller's
environment (``LENS_CACHE`` included, so cached weights and organisms are reused). The
notebooks check their own claims with ``assert`` cells (e.g. the plain run collapses and the
sigmaReparam run does not), so a wrong number fails here too. The committed notebooks carry
no outputs; the executed copies, with outputs, are written to ``test-output/notebooks/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
OUT_DIR = ROOT / "test-output" / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 900  # seconds per cell: the 8K capture is the longest


def _params():
    out = []
    for path in NOTEBOOKS:
        marks = [pytest.mark.notebook]
        if 'lens.load("smollm2")' in path.read_text():
            marks.append(pytest.mark.smollm2)
        if "lens.organisms.train(" in path.read_text():
            marks.append(pytest.mark.organism)
        out.append(pytest.param(path, id=path.stem, marks=marks))
    return out


def test_notebooks_exist_in_order():
    names = [p.name for p in NOTEBOOKS]
    assert [n[:2] for n in names] == sorted(n[:2] for n in names)
    assert {"01", "02", "03", "06"} <= {n[:2] for n in names}, names


def test_notebooks_have_no_outputs_and_match_their_source():
    """Outputs stay out of git; the .ipynb files are what ``notebooks/_build.py`` writes."""
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
        assert any(c.cell_type == "markdown" for c in nb.cells)
    done = subprocess.run([sys.executable, str(NB_DIR / "_build.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", _params())
def test_notebook_runs(path: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ)
    # The repo root first on the path, so the kernel imports this checkout's packages.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONWARNINGS", "ignore")
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute(env=env)
    finally:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, OUT_DIR / path.name)
    print(f"{path.name}: {time.perf_counter() - t0:.0f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors

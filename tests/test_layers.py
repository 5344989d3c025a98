"""The package's layering (docs/DESIGN.md) is checked, not hoped for: import-linter's contracts in
pyproject.toml's ``[tool.importlinter]`` (kernels <- model <- edits <- record <- analyzers <- store <-
experiments <- circuits <- probes <- viz <- dashboard <- cli, and no import circle inside any package)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from skips import require

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    require("importlinter")
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_lens_is_the_only_top_level_package_in_the_repository():
    tops = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    assert tops == ["lens"], tops

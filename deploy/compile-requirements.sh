#!/usr/bin/env bash
# Compiles deploy/<service>/requirements.in into a hashed requirements.txt, resolving against the
# public Python package index only (the local pip configuration is ignored), with the Python of
# the image that installs it: 3.12 for the learned stages (CUDA images, Ubuntu 24.04), 3.11 for
# the CPU stages, the orchestrator and the build tools (python:3.11-slim). The stage table
# (services/common/stages.py, `learned`) says which, as it does for the image's BASE.
# Only metadata is downloaded: wheels are read lazily with HTTP range requests (pip's fast-deps)
# and hashes come from the index (deploy/pip_compile.py says why).
# Usage: deploy/compile-requirements.sh [service ...]   (default: every folder with a requirements.in)
#   INDEX_URL: the simple index to resolve against (default: pip's own default index, PyPI's)
#   PYTHON_311, PYTHON_312: interpreters to resolve with (defaults: .venv/bin/python, and a venv
#   made once in build/compile-python3.12 from python3.12 on PATH or under pyenv, with the pip and
#   pip-tools versions of .venv, which deploy/pip_compile.py relies on)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_311=${PYTHON_311:-.venv/bin/python}
INDEX_URL=${INDEX_URL:-$("$PYTHON_311" -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')}

python312() {
  if [ -n "${PYTHON_312:-}" ]; then echo "$PYTHON_312"; return; fi
  local venv=build/compile-python3.12
  if [ ! -x "$venv/bin/python" ]; then
    local base="" candidate
    for candidate in "$(command -v python3.12 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python3.12; do
      if [ -n "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then base=$candidate; break; fi
    done
    if [ -z "$base" ]; then
      echo "no Python 3.12 found: install one (e.g. pyenv install 3.12) or set PYTHON_312" >&2
      return 1
    fi
    "$base" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet \
      "pip==$("$PYTHON_311" -m pip --version | cut -d' ' -f2)" \
      "pip-tools==$("$PYTHON_311" -c 'import importlib.metadata as m; print(m.version("pip-tools"))')"
  fi
  echo "$venv/bin/python"
}

services=("$@")
if [ ${#services[@]} -eq 0 ]; then
  for f in deploy/*/requirements.in; do services+=("$(basename "$(dirname "$f")")"); done
fi
for service in "${services[@]}"; do
  if "$PYTHON_311" -c 'import sys; from services.common.stages import STAGES as s
sys.exit(0 if sys.argv[1] in s and s[sys.argv[1]].learned else 1)' "$service"; then
    python=$(python312) || exit 1
  else
    python=$PYTHON_311
  fi
  echo "== $service ($python)" >&2
  env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    CUSTOM_COMPILE_COMMAND="deploy/compile-requirements.sh $service" \
    "$python" deploy/pip_compile.py --quiet --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --index-url "$INDEX_URL" \
    --pip-args "--use-feature=fast-deps" \
    --output-file "deploy/$service/requirements.txt" "deploy/$service/requirements.in"
done

#!/usr/bin/env bash
# Compiles deploy/<service>/requirements.in into a hashed requirements.txt, resolving against the
# public package index given in INDEX_URL only (the local pip configuration is ignored). The image's Python decides which interpreter
# resolves: Python 3.12 for the CUDA images (Ubuntu 24.04), Python 3.11 for the slim images.
# Only metadata is downloaded: wheels are read lazily with HTTP range requests (pip's fast-deps)
# and hashes come from the index (deploy/pip_compile.py says why).
# Usage: deploy/compile-requirements.sh [service ...]   (default: every folder with a requirements.in)
#   INDEX_URL: the simple index to resolve against (required: the public Python package index)
#   PYTHON_311, PYTHON_312: interpreters with pip-tools installed
#   (defaults: .venv/bin/python and python3.12 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
INDEX_URL=${INDEX_URL:?set INDEX_URL to the simple index of the public Python package index}
PYTHON_311=${PYTHON_311:-.venv/bin/python}
PYTHON_312=${PYTHON_312:-python3.12}
services=("$@")
if [ ${#services[@]} -eq 0 ]; then
  for f in deploy/*/requirements.in; do services+=("$(basename "$(dirname "$f")")"); done
fi
for service in "${services[@]}"; do
  if grep -q '^FROM nvidia/cuda' "deploy/$service/Dockerfile" 2>/dev/null; then
    python=$PYTHON_312
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

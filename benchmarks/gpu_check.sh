#!/usr/bin/env bash
# GPU check: every learned stage on CUDA against its CPU path (benchmarks/gpu_check.py says
# what is compared and why the tolerances are what they are), one JSON line last.
#
# The GPU machine gets a copy of the checkout and nothing else: Python 3.12 with torch,
# torchvision, numpy, opencv and transformers, no internet, so pip cannot download. Our .venv
# (6 GB with torch) does not travel; the few packages the image lacks travel as wheels, and
# glvnd's EGL loader (for the render check on the NVIDIA driver) as Debian packages:
#
#   1. here, once:  bash benchmarks/gpu_check.sh --fetch
#      (about 45 MB into .gpu-check/, which it adds to .git/info/exclude; the wheels' versions
#      are the ones in .venv)
#   2. on the device, with the device tool:
#      run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-check"], timeout_s=540)
#
# On the device it installs the wheels into /tmp/nlfpipe-gpu-check/site (PYTHONPATH) and
# unpacks the EGL packages into /tmp/nlfpipe-gpu-check/gl (LD_LIBRARY_PATH; nothing under /),
# then runs the check with the machine's python3 (or $PYTHON, or .venv/bin/python when present).
# It finishes within 8 minutes: stages not started after --budget-s (420 s) are skipped.
# Without a CUDA device it prints {"skipped": "no CUDA device", ...} and exits 0.
# Other arguments go to gpu_check.py (e.g. --stages semseg,pose; --device cpu --quick).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$ROOT/.gpu-check"
WORK=/tmp/nlfpipe-gpu-check
WHEELS="av framepump simplepyutils more-itertools slicecompose rlemasklib moderngl glcontext
minio argon2-cffi argon2-cffi-bindings cffi pycparser pycryptodome"
GL_DEBS="libegl1 libglvnd0 libopengl0 libgl1 libglx0"
NVIDIA_EGL_VENDOR=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json

fetch() {
    local python="$ROOT/.venv/bin/python" pins=()
    mkdir -p "$BUNDLE/wheels" "$BUNDLE/gl"
    local exclude
    exclude="$(git -C "$ROOT" rev-parse --path-format=absolute --git-path info/exclude)"
    grep -qxF "/.gpu-check/" "$exclude" 2>/dev/null || echo "/.gpu-check/" >>"$exclude"
    for name in $WHEELS; do
        pins+=("$name==$("$python" -c "import importlib.metadata as m; print(m.version('$name'))")")
    done
    local platforms=()
    for p in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_17 manylinux2014 manylinux1 \
        manylinux_2_5; do
        platforms+=(--platform "${p}_x86_64")
    done
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d "$BUNDLE/wheels" "${pins[@]}"
    local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    mkdir -p /tmp/amd64/partial
    apt-get "${o[@]}" update -qq
    (cd "$BUNDLE/gl" && apt-get "${o[@]}" download -qq $GL_DEBS)
    du -sh "$BUNDLE"
}

prepare() {
    if compgen -G "$BUNDLE/wheels/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$BUNDLE"/wheels/*.whl >&2
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if compgen -G "$BUNDLE/gl/*.deb" >/dev/null; then
        for deb in "$BUNDLE"/gl/*.deb; do dpkg -x "$deb" "$WORK/gl"; done
        local lib="$WORK/gl/usr/lib/x86_64-linux-gnu"
        export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export GLCONTEXT_LINUX_LIBEGL="$lib/libEGL.so.1" GLCONTEXT_LINUX_LIBGL="$lib/libGL.so.1"
    fi
    if [[ -f $NVIDIA_EGL_VENDOR && -z ${__EGL_VENDOR_LIBRARY_FILENAMES:-} ]]; then
        export __EGL_VENDOR_LIBRARY_FILENAMES=$NVIDIA_EGL_VENDOR
    fi
}

if [[ ${1:-} == --fetch ]]; then
    fetch
    exit 0
fi
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=python3
    [[ -x $ROOT/.venv/bin/python ]] && PYTHON="$ROOT/.venv/bin/python"
fi
# 0: CUDA, 3: torch without CUDA, other: no usable torch
status=0
"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null \
    || status=$?
if [[ $status != 0 ]]; then
    reason="torch sees no CUDA device"
    [[ $status != 3 ]] && reason="$PYTHON cannot import torch"
    echo '{"skipped": "no CUDA device", "reason": "'"$reason"'"}'
    exit 0
fi
mkdir -p "$WORK"
prepare
export PYTHONUNBUFFERED=1
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"

#!/usr/bin/env bash
# Installs the Debian packages nlfpipe needs (part of `make setup`, so of `make run` and `make test`).
# One list for the whole project; a stage that needs a system library adds it here with its reason.
# As root the missing packages are installed with apt-get; otherwise the command to run is printed.
set -euo pipefail

PACKAGES=(
  # render: headless OpenGL through EGL on machines without a GPU driver (Mesa's llvmpipe);
  # moderngl/glcontext load libEGL.so.1 and libGL.so.1 (the glvnd loaders) at run time.
  libegl1
  libgl1
  libegl-mesa0
  libgl1-mesa-dri
  # tests: the Prefect UI test drives a headless Chromium (Playwright uses this one, no download).
  chromium
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "nlfpipe needs these system packages (Debian names): ${missing[*]}" >&2
  echo "install their equivalents with your system's package manager, then re-run make" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "nlfpipe needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# Sets up everything on a fresh machine: a virtual environment in .venv with the pinned
# requirements, and the generated sample studies in sample-data/studies. Safe to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "creating virtual environment .venv"
    "$PYTHON" -m venv .venv
fi
# sam2 is an sdist; without CUDA it must skip its extension instead of failing the build
export SAM2_BUILD_CUDA=0
if ! .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt; then
    echo "installing requirements failed (see above)" >&2
    exit 1
fi
if [ ! -d sample-data/studies ]; then
    .venv/bin/python sample-data/make_sample_data.py sample-data/studies
fi
echo "setup done: activate with 'source .venv/bin/activate'"

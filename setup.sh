#!/usr/bin/env bash
# Sets up everything on a fresh machine: a virtual environment in .venv with the pinned
# requirements, and the generated sample studies in sample-data/studies. Safe to re-run.
#
#   bash setup.sh           the app (serve with .venv/bin/monailabel start_server ...)
#   bash setup.sh --tests   also what the PACS, browser and replica tests use: Debian's orthanc,
#                           orthanc-dicomweb, chromium, nginx and dicom3tools (dciodvfy checks the
#                           DICOM SEG the app writes) (apt, needs root) and the pinned
#                           requirements-tests.txt. Without apt those tests skip and say why.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

WITH_TESTS=0
for arg in "$@"; do
    case "$arg" in
        --tests) WITH_TESTS=1 ;;
        *) echo "unknown option $arg (known: --tests)" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "creating virtual environment .venv"
    "$PYTHON" -m venv .venv
fi
# sam2 is an sdist; without CUDA it must skip its extension instead of failing the build
export SAM2_BUILD_CUDA=0
# The venv takes about 9 GB (torch's CUDA build alone is over 4 GB); pip keeps no second copy in
# its cache, and a disk too full for it is named before pip fails half-way with "No space left".
export PIP_NO_CACHE_DIR=1
free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if ! compgen -G ".venv/lib/python3*/site-packages/torch" >/dev/null && [ "${free_kb:-0}" -lt $((10 * 1024 * 1024)) ]; then
    echo "WARNING: $((free_kb / 1024)) MB free on this disk; the environment needs about 10 GB" >&2
fi
if ! .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt; then
    echo "installing requirements failed (see above)" >&2
    exit 1
fi
# the engine and evaluation packages, importable from anywhere (pyproject.toml)
if ! .venv/bin/python -m pip install --disable-pip-version-check -q --no-build-isolation -e .; then
    echo "installing the project (pip install -e .) failed (see above)" >&2
    exit 1
fi

# MONAI Label's `monailabel` launcher runs whichever `python` is first on PATH, so
# `.venv/bin/monailabel` fails unless the venv is activated. Replace it with one that
# always runs this venv's interpreter (re-written on every set-up, after pip).
cat > .venv/bin/monailabel <<'EOF'
#!/usr/bin/env bash
# written by setup.sh: MONAI Label's CLI with this venv's python, activated or not
exec "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/python" -m monailabel.main "$@"
EOF
chmod +x .venv/bin/monailabel


if [ "$WITH_TESTS" = 1 ]; then
    if ! .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements-tests.txt; then
        echo "installing requirements-tests.txt failed (see above)" >&2
        exit 1
    fi
    packages="orthanc orthanc-dicomweb chromium nginx dicom3tools"
    missing=""
    for package in $packages; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo -n"
        if command -v apt-get >/dev/null 2>&1 \
            && $sudo apt-get update -q \
            && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $missing; then
            echo "installed$missing"
        else
            echo "WARNING: could not install$missing with apt-get; the PACS (Orthanc), browser" \
                 "(OHIF in Chromium), replica (nginx) and SEG validation (dciodvfy) tests will skip and say why" >&2
        fi
    fi
fi

if [ ! -d sample-data/studies ]; then
    .venv/bin/python sample-data/make_sample_data.py sample-data/studies
fi
echo "setup done: serve with .venv/bin/monailabel start_server --app apps/medsam2 --studies sample-data/studies"

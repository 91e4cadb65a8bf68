#!/usr/bin/env bash
# Set up mt in ./.venv: torch first (pinned, so pip never swaps in another build), then mt with
# its dependencies and the test tools. Safe to run again: it only installs what is missing.
#
# torch: `pip install torch==2.13.0` takes the CPU wheel that CPU machines of this project keep
# on disk. Elsewhere, on a machine without a GPU, point pip at PyTorch's CPU index to avoid the
# multi-GB CUDA build:  MT_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
#
# MT_LOCKED=1 installs the exact versions of requirements-lock.txt (those CI passed with);
# MT_LOWEST=1 the lowest ones pyproject.toml allows (requirements-lowest.txt, tested in CI).
# PYTHON picks the interpreter and MT_VENV the folder (default .venv), e.g. for another Python:
#   PYTHON=python3.10 MT_VENV=.venv-3.10 MT_LOWEST=1 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${MT_VENV:-.venv}
TORCH_VERSION=${MT_TORCH_VERSION:-2.13.0}
LOCK_FILE=
if [ "${MT_LOCKED:-0}" = 1 ] && [ "${MT_LOWEST:-0}" = 1 ]; then
    echo "setup: MT_LOCKED=1 and MT_LOWEST=1 ask for two different sets of versions: set one" >&2
    exit 2
elif [ "${MT_LOCKED:-0}" = 1 ]; then
    LOCK_FILE=requirements-lock.txt
elif [ "${MT_LOWEST:-0}" = 1 ]; then
    LOCK_FILE=requirements-lowest.txt
fi
LOCK=()
if [ -n "$LOCK_FILE" ]; then
    LOCK=(-c "$LOCK_FILE")
    TORCH_VERSION=$(sed -n 's/^torch==//p' "$LOCK_FILE")
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | grep -v "^WARNING: Location" || true; }

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==$TORCH_VERSION"
    if [ -n "${MT_TORCH_INDEX:-}" ]; then
        pip_install "torch==$TORCH_VERSION" --index-url "$MT_TORCH_INDEX"
    else
        pip_install "torch==$TORCH_VERSION"
    fi
fi
if [ -n "$LOCK_FILE" ] || ! "$VENV/bin/python" -c "import mt, sentencepiece, datasets, sacrebleu, hydra, tensorboard, ctranslate2, fastapi, uvicorn, httpx, selenium, pytest, ruff, hypothesis, matplotlib" 2>/dev/null; then
    echo "setup: installing mt and its dependencies${LOCK_FILE:+ ($LOCK_FILE)}"
    pip_install -e ".[dev,plot]" "${LOCK[@]}"
fi
"$VENV/bin/python" -c "import torch, mt, sys; print(f'setup: ok (python {sys.version.split()[0]}, torch {torch.__version__}, mt {mt.__version__})')"

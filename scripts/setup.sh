#!/usr/bin/env bash
# Create .venv with both sides (operator + worker) and the test tools, pinned by constraints.txt.
# Idempotent: a second run only checks that everything is installed. pip's cache is kept, so a
# reinstall of the multi-GB torch wheel is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# -P: do not put the current directory on sys.path. The repository root holds a folder named
# operator/, which would otherwise shadow the standard library's operator module.
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -P -m venv .venv
fi
.venv/bin/python -P -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -P -m pip install --quiet -c constraints.txt -e ".[dev,bench]"
.venv/bin/python -P -m pip check
echo "setup: .venv ready ($(.venv/bin/python --version), $(.venv/bin/cpt --help >/dev/null && echo 'cpt installed'))"

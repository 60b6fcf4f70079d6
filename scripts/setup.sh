#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything mkmsr needs (idempotent).
# torch is pinned here, not in the package: 2.13.0 is the CPU build this project is tested on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
# serve: the test suite starts the real HTTP server
.venv/bin/python -m pip install -q -e ".[test,serve${MKMSR_EXTRAS:+,$MKMSR_EXTRAS}]"
# ann: tests/test_ann.py serves from hnswlib / faiss indexes (hnswlib is compiled from its sdist:
# it needs a C++ compiler); without it those tests skip, so a failed build must not stop the set-up
.venv/bin/python -m pip install -q -e ".[ann]" \
  || echo "setup.sh: the 'ann' extra (hnswlib, faiss-cpu) did not install: tests/test_ann.py will skip" >&2
# tune: the test suite runs real Optuna studies (mkmsr tune)
.venv/bin/python -m pip install -q -e ".[tune]"
# study: scikit-learn for the repeat-decision studies (tests/test_repeat_oracle.py fits their models)
.venv/bin/python -m pip install -q -e ".[study]"

#!/usr/bin/env bash
# The RecBole 1.2.1 peer of benchmarks/speed.py, in its own virtual environment (.venv-recbole):
# never a dependency of mkmsr. Pins from /work/shared/notes/recbole-peer.md (numpy 1.26 / pandas 2.2 /
# setuptools < 81 for pkg_resources; torch 2.13.0 CPU as in .venv). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-recbole/bin/python ]; then
  "$PY" -m venv .venv-recbole
fi
.venv-recbole/bin/pip install -q "torch==2.13.0"
.venv-recbole/bin/pip install -q "recbole==1.2.1" "numpy<2" "pandas<2.3" "setuptools<81" "ray==2.6.3" thop texttable \
  "colorlog==4.7.2" tensorboard plotly

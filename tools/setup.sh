#!/usr/bin/env bash
# Set up a fresh machine for cgraph: Debian's graphviz (for `dot`), a virtual environment in
# .venv, and the package (editable) with the extras for a purpose. Safe to run again.
#
#   bash tools/setup.sh        the library and what the examples need (matplotlib, scikit-learn)
#   bash tools/setup.sh dev    the tests, the linter, the docs, the checks CI runs (torch and
#                              onnxruntime as test oracles: about 1.5 GB)
#   bash tools/setup.sh EXTRAS any extras of pyproject.toml, comma-separated (plot,onnx)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-plot,examples}"
if ! command -v dot >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null && apt-get install -y -q graphviz >/dev/null
    else
        echo "note: Graphviz's 'dot' is missing; install it (apt-get install graphviz) to render" >&2
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extras}]"
echo "set up .venv with cgraph-ad[${extras}]; the command is .venv/bin/cgraph" \
     "('source .venv/bin/activate' puts it and python on PATH)" >&2

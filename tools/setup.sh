#!/usr/bin/env bash
# Set up a fresh machine for cgraph: Debian's graphviz (for `dot`), a virtual environment in
# .venv with the package and its dev extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
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
.venv/bin/python -m pip install -q -e '.[dev]'

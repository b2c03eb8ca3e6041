"""Run cgraph's benchmarks: `python tools/bench/run.py [section ...]`.

Each section is a module in this folder with a `main()` that prints its table; ratios are
measured against a baseline in the same process (the lecture's numpy code, or an unbudgeted
run). With no arguments every section runs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SECTIONS = ["speed", "memory", "io_throughput", "iris_training", "jacobians", "control", "conv"]


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    chosen = argv or [s for s in SECTIONS if (Path(__file__).parent / f"{s}.py").exists()]
    for name in chosen:
        if name not in SECTIONS:
            print(f"unknown section {name!r}; sections: {', '.join(SECTIONS)}", file=sys.stderr)
            return 2
        sys.argv = [f"{name}.py"]  # a section that reads its own options gets its defaults
        importlib.import_module(name).main()
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Save and load throughput of cgraph model files, and their size overhead over tensor bytes.

    python tools/bench/io_throughput.py [--sizes-gib 1 2.125] [--dir /tmp]

For each size, one float32 param of that many bytes (plus a small MLP around it) is saved with
`cg.save` (fsync included) and loaded with `cg.load` (all checks and CRC-32s included). A
100 MiB model shows the inline (plain protobuf) path too. Prints MB/s (10^6 bytes per second)
measured in this run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np

import cgraph as cg


def model(nbytes: int) -> cg.Graph:
    g = cg.Graph(f"bench-{nbytes}")
    x = g.input("x", (None, 8), "float32")
    n = nbytes // 4
    big = np.arange(n, dtype=np.float32)  # cheap to fill; its bytes are what is measured
    W = g.add_leaf("param", "embed", (n,), big.dtype, big)  # no second copy (g.param copies)
    V = g.param("V", np.ones((8, 4), np.float32))
    g.output("y", cg.tanh(x @ V) * W[:4])
    g.metadata["purpose"] = "io throughput benchmark"
    return g


def measure(nbytes: int, folder: Path) -> dict[str, float]:
    g = model(nbytes)
    tensor_bytes = sum(g.value(n).nbytes for n, node in g.nodes.items() if node.op in ("param", "constant"))
    path = folder / "bench.pb"
    t0 = time.perf_counter()
    cg.save(g, path)
    t_save = time.perf_counter() - t0
    del g
    gc.collect()
    t0 = time.perf_counter()
    h = cg.load(path)
    t_load = time.perf_counter() - t0
    size = path.stat().st_size
    del h
    gc.collect()
    path.unlink()
    return {"tensor_bytes": tensor_bytes, "file_bytes": size, "save_mbps": tensor_bytes / t_save / 1e6,
            "load_mbps": tensor_bytes / t_load / 1e6, "overhead": size - tensor_bytes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gib", type=float, nargs="+", default=[100 / 1024, 1.0, 2.125])
    parser.add_argument("--dir", default=None, help="where to write the files (default: a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"{'tensors':>12} {'file':>16} {'overhead':>10} {'layout':>8} {'save MB/s':>10} {'load MB/s':>10}")
        for gib in args.sizes_gib:
            r = measure(int(gib * 2**30), Path(tmp))
            layout = "inline" if r["tensor_bytes"] <= cg.io.INLINE_LIMIT else "payload"
            print(f"{r['tensor_bytes']:>12,} {r['file_bytes']:>16,} {r['overhead']:>10,} {layout:>8} "
                  f"{r['save_mbps']:>10.0f} {r['load_mbps']:>10.0f}")


if __name__ == "__main__":
    main()

"""Save and load speed and memory of cgraph model files against numpy, torch and safetensors.

    python tools/bench/io_throughput.py [--gib 1] [--rounds 3] [--mmap-gib 4] [--dir DIR]

The model is eight float64 params of equal size (`--gib 1`: eight 4096 x 4096). Each round
saves it once in every format and loads each file cold and warm, in turns, each format first
in some round (best of the rounds):

- save: `cg.save` (atomic, fsync included) against `np.savez`, `torch.save` and safetensors'
  `save_file`, each followed by an fsync of the file, as tensor MiB/s;
- load: `cg.load` (every check and CRC-32) against `np.load`, `torch.load(weights_only=True)`
  and safetensors' `load_file`, each in a fresh child process (imports done before timing),
  as tensor MiB/s, cold (page cache dropped: /proc/sys/vm/drop_caches when writable, else
  posix_fadvise(DONTNEED) on the file) and warm (the file read just before);
- peak: the child's peak RSS growth while loading (VmHWM, reset first) over the tensor bytes.

`cg.load(path, mmap=True)` is timed as the open alone and as the open plus touching every page.
Then a `--mmap-gib` model (default 4, skipped if the disk lacks room; 0 to skip) is opened with
`mmap=True`, cold and warm. Peers missing from the environment are left out. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cgraph as cg

MIB = 2**20
N_PARAMS = 8

# Run in a fresh process: import the format's library, then time one load and report the peak
# RSS growth (VmHWM reset through /proc/self/clear_refs, so imports do not count).
CHILD = r"""
import json, sys, time
fmt, path = sys.argv[1], sys.argv[2]
import numpy as np
if fmt.startswith("cgraph"):
    import cgraph as cg
elif fmt == "torch":
    import torch
elif fmt == "safetensors":
    from safetensors.numpy import load_file

def status():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f) if v.strip().endswith("kB")}

def touch(arrays):  # read one byte of every page
    return sum(int(a.reshape(-1).view(np.uint8)[::4096].sum()) for a in arrays)

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = status()["VmRSS"]
t0 = time.perf_counter()
if fmt == "cgraph":
    out = list(cg.load(path).params.values())
elif fmt == "cgraph-mmap-open":
    out = list(cg.load(path, mmap=True).params.values())
elif fmt == "cgraph-mmap":
    out = list(cg.load(path, mmap=True).params.values())
    touch(out)
elif fmt == "numpy":
    with np.load(path) as z:
        out = [z[k] for k in z.files]
elif fmt == "torch":
    out = list(torch.load(path, weights_only=True).values())
elif fmt == "safetensors":
    out = list(load_file(path).values())
seconds = time.perf_counter() - t0
s = status()
print(json.dumps({"seconds": seconds, "peak": s["VmHWM"] - before, "nbytes": sum(a.nbytes for a in out)}))
"""


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def savers(arrays: dict[str, np.ndarray]) -> dict[str, object]:
    """Format name -> a function saving the model to a path (fsync included)."""
    g = cg.Graph("bench")
    for k, v in arrays.items():
        g.param(k, v)
    out = {"cgraph": lambda p: cg.save(g, p)}

    def numpy_save(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, **arrays)
        fsync_file(p)
    out["numpy"] = numpy_save
    if importlib.util.find_spec("torch"):
        import torch
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}

        def torch_save(p: Path) -> None:
            torch.save(tensors, p)
            fsync_file(p)
        out["torch"] = torch_save
    if importlib.util.find_spec("safetensors"):
        from safetensors.numpy import save_file

        def st_save(p: Path) -> None:
            save_file(arrays, str(p))
            fsync_file(p)
        out["safetensors"] = st_save
    return out


def can_drop_caches() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def make_cold(path: Path, drop: bool) -> None:
    os.sync()
    if drop:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(64 * MIB)
        while f.readinto(buf):
            pass


def child_load(fmt: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, fmt, str(path)], capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"{fmt} load failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def model(nbytes: int) -> dict[str, np.ndarray]:
    rows = max(1, nbytes // (N_PARAMS * 4096 * 8))
    return {f"layer{i}/W": np.arange(rows * 4096, dtype=np.float64).reshape(rows, 4096) + i
            for i in range(N_PARAMS)}


def throughput_table(nbytes: int, rounds: int, folder: Path, drop: bool) -> None:
    arrays = model(nbytes)
    tensor_bytes = sum(a.nbytes for a in arrays.values())
    save = savers(arrays)
    loads = {fmt: [fmt] for fmt in save}
    loads["cgraph"] += ["cgraph-mmap-open", "cgraph-mmap"]
    paths = {fmt: folder / f"model.{fmt}" for fmt in save}
    best: dict[tuple[str, str], float] = {}
    peak: dict[str, int] = {}

    def keep(key: tuple[str, str], seconds: float) -> None:
        best[key] = min(best.get(key, float("inf")), seconds)
    names = list(save)
    for r in range(rounds):
        for fmt in names[r % len(names):] + names[:r % len(names)]:  # each format first in some round
            fn = save[fmt]
            paths[fmt].unlink(missing_ok=True)
            t0 = time.perf_counter()
            fn(paths[fmt])
            keep((fmt, "save"), time.perf_counter() - t0)
            for how in loads[fmt]:
                make_cold(paths[fmt], drop)
                r = child_load(how, paths[fmt])
                keep((how, "cold"), r["seconds"])
                make_warm(paths[fmt])
                r = child_load(how, paths[fmt])
                keep((how, "warm"), r["seconds"])
                peak[how] = max(peak.get(how, 0), r["peak"])
                assert r["nbytes"] == tensor_bytes, (how, r["nbytes"])
    formats = list(save)
    del save, arrays
    print(f"{tensor_bytes / MIB:,.0f} MiB of float64 tensors in {N_PARAMS} params; best of {rounds} rounds; "
          f"cold cache by {'drop_caches' if drop else 'posix_fadvise(DONTNEED)'}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'format':<32} {'save MiB/s':>10} {'cold MiB/s':>10} {'warm MiB/s':>10} {'cold s':>8} {'warm s':>8} "
          f"{'peak/size':>9} {'file/size':>9}")
    names = {"cgraph": "cgraph save / load", "cgraph-mmap-open": "cgraph load(mmap=True): open",
             "cgraph-mmap": "  open + touch every page", "numpy": "numpy savez / load",
             "torch": "torch save / load(weights_only)", "safetensors": "safetensors save_file / load_file"}
    for fmt in formats:
        for how in loads[fmt]:
            s = f"{tensor_bytes / MIB / best[(fmt, 'save')]:>10,.0f}" if how == fmt else f"{'':>10}"
            size = f"{paths[fmt].stat().st_size / tensor_bytes:>9.4f}" if how == fmt else f"{'':>9}"
            cold, warm = best[(how, "cold")], best[(how, "warm")]
            print(f"{names[how]:<32} {s} {tensor_bytes / MIB / cold:>10,.0f} {tensor_bytes / MIB / warm:>10,.0f} "
                  f"{cold:>8.3f} {warm:>8.3f} {peak[how] / tensor_bytes:>9.3f} {size}")
    peers = [f for f in formats if f != "cgraph"]
    if peers:
        print("cgraph / fastest peer:", ", ".join(
            f"{what} {min(best[(p, what)] for p in peers) / best[('cgraph', what)]:.2f}x"
            for what in ("save", "cold", "warm")))
    for p in paths.values():
        p.unlink(missing_ok=True)


def mmap_open(nbytes: int, rounds: int, folder: Path, drop: bool) -> None:
    path = folder / "big.pb"
    g = cg.Graph("big")
    rows = nbytes // (N_PARAMS * 4096 * 8)
    for i in range(N_PARAMS):
        g.param(f"layer{i}/W", np.full((rows, 4096), float(i)))
    t0 = time.perf_counter()
    cg.save(g, path)
    t_save = time.perf_counter() - t0
    del g
    cold = warm = float("inf")
    for _ in range(rounds):
        make_cold(path, drop)
        cold = min(cold, child_load("cgraph-mmap-open", path)["seconds"])
        warm = min(warm, child_load("cgraph-mmap-open", path)["seconds"])
    print(f"{nbytes / 2**30:.0f} GiB model: cg.save {nbytes / MIB / t_save:,.0f} MiB/s; "
          f"cg.load(mmap=True) opens in {cold * 1e3:.1f} ms cold, {warm * 1e3:.1f} ms warm")
    path.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the compared model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mmap-gib", type=float, default=4.0, help="size of the model opened with mmap=True")
    parser.add_argument("--dir", default=None, help="where to write the files (default: a temp folder)")
    args = parser.parse_args(argv)
    drop = can_drop_caches()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        throughput_table(int(args.gib * 2**30), args.rounds, Path(tmp), drop)
        need = args.mmap_gib * 2**30 * 1.1
        if args.mmap_gib and shutil.disk_usage(tmp).free > need:
            mmap_open(int(args.mmap_gib * 2**30), args.rounds, Path(tmp), drop)
        elif args.mmap_gib:
            print(f"skipped the {args.mmap_gib:g} GiB mmap model: not enough free disk space")


if __name__ == "__main__":
    main()

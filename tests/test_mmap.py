"""Model files in one copy of memory, and memory-mapped: `cg.load(path, mmap=True)` gives
read-only params backed by the file, checks the structure at open and leaves the CRC-32s of
mapped tensors to `cgraph check`; saving over a mapped file and `set_param` stay safe; a
load's peak memory is the tensor bytes (measured in a fresh process)."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cgraph as cg
import cgraph.io as cio
from cgraph._proto import cgraph_pb2 as pb
from cgraph.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent


def model(scale: float = 1.0) -> cg.Graph:
    """Payload tensors of every dtype, one of an odd byte count (b: 33 float32s) that leaves
    those after it unaligned, and state."""
    g = cg.Graph("mapped")
    x = g.input("x", (None, 64))
    W = g.param("W", np.arange(64 * 32, dtype=np.float64).reshape(64, 32) * scale)
    b = g.param("b", np.linspace(-1, 1, 33, dtype=np.float32) * scale, dtype="float32")
    V = g.param("V", np.ones((32, 3)) * scale)
    k = g.constant("k", np.arange(3))
    g.output("y", cg.tanh(x @ W) @ V + cg.cast(k, "float64") + cg.sum(cg.cast(b, "float64")))
    g.state["m"] = np.full((4, 4), 0.5 * scale)
    g.state["mask"] = np.array([True, False, True])
    return g


def save(g: cg.Graph, path: Path) -> Path:
    cg.save(g, path, inline_limit=0)  # every tensor in the payload section
    return path


def is_mapped(arr: np.ndarray) -> bool:
    """Whether `arr` views a read-only map (a file's; large loaded arrays are writable anonymous maps)."""
    base = arr
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if isinstance(base, np.ndarray) else getattr(base, "obj", None)
    return base is not None and memoryview(base).readonly


def payload_range(path: Path, node: str) -> tuple[int, int]:
    """The file offsets [start, end) of a node's tensor, from the footer and the message."""
    data = path.read_bytes()
    m = int.from_bytes(data[-22:-14], "little")
    msg = pb.Model.FromString(data[:m])
    ref = next(n.value.payload for n in msg.graph.node if n.name == node)
    return m + ref.offset, m + ref.offset + ref.length


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def test_mapped_values_outputs_and_read_only(tmp_path):
    g = model()
    h = cg.load(save(g, tmp_path / "m.pb"), mmap=True)
    feeds = {"x": np.random.default_rng(0).normal(size=(5, 64))}
    assert np.array_equal(cg.Evaluator(h).run(feeds)["y"], cg.Evaluator(g).run(feeds)["y"])
    for name in ("W", "b", "V", "k"):
        a, v = g.value(name), h.value(name)
        assert v.dtype == a.dtype and v.shape == a.shape and v.tobytes() == a.tobytes()
        assert not v.flags.writeable
    for k, v in g.state.items():
        assert np.array_equal(h.state[k], v) and h.state[k].dtype == v.dtype
    assert is_mapped(h.value("W")) and is_mapped(h.value("b"))  # W at the aligned start, b after it
    assert not is_mapped(h.value("V"))  # after b's 132 bytes: unaligned, read and checked instead
    for name in ("W", "b"):
        with pytest.raises(ValueError):
            h.value(name).flags.writeable = True  # the map itself is read-only
    with pytest.raises(ValueError):
        h.value("W")[0, 0] = 1.0


def test_the_payload_starts_aligned_and_mapping_is_the_default_layout_for_large_models(tmp_path):
    g = cg.Graph("big")
    g.param("W", np.ones((2048, 1025)))  # 16.02 MiB: past the inline limit
    g.param("c", np.zeros(5))  # small: stays in the message
    path = tmp_path / "big.pb"
    cg.save(g, path)
    mf = cio.read_model(path, mmap=True)
    assert mf.payload_bytes == 2048 * 1025 * 8
    assert (mf.file_bytes - mf.payload_bytes - 30) % 64 == 0
    assert is_mapped(mf.graph.params["W"]) and not is_mapped(mf.graph.params["c"])
    assert np.array_equal(mf.graph.params["W"], g.params["W"])
    W = cg.load(path).params["W"]  # read into memory of its own (an anonymous map): writable by training
    assert np.array_equal(W, g.params["W"]) and not W.flags.writeable and not is_mapped(W)
    W.flags.writeable = True


def test_a_corrupted_mapped_tensor_is_refused_by_check_and_plain_load(tmp_path, capsys):
    path = save(model(), tmp_path / "m.pb")
    start, end = payload_range(path, "W")
    flip(path, start + 8 * 100)
    h = cg.load(path, mmap=True)  # documented: mapped tensors are not checksummed at open
    assert h.value("W").reshape(-1)[100] != 100.0
    with pytest.raises(cg.GraphFormatError, match=r"param 'W': corrupted: the CRC-32 of its payload"):
        cg.load(path)
    with pytest.raises(cg.GraphFormatError, match=r"param 'W': corrupted"):
        cio.read_model(path, mmap=True, verify=True)
    assert cli(["check", str(path)]) == 1  # which maps and verifies
    assert "param 'W': corrupted" in capsys.readouterr().err
    good = save(model(), tmp_path / "good.pb")
    assert is_mapped(cio.read_model(good, mmap=True, verify=True).graph.params["W"])


def test_corruption_that_mmap_checks_at_open(tmp_path):
    path = save(model(), tmp_path / "m.pb")
    start, _ = payload_range(path, "V")  # unaligned: read into memory, so checked
    flip(path, start + 3)
    with pytest.raises(cg.GraphFormatError, match=r"param 'V': corrupted: the CRC-32"):
        cg.load(path, mmap=True)
    path = save(model(), tmp_path / "m2.pb")
    flip(path, 20)  # the message: its CRC-32 is checked before anything else
    with pytest.raises(cg.GraphFormatError, match=r"the CRC-32 of the message section"):
        cg.load(path, mmap=True)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(cg.GraphFormatError, match="truncated"):
        cg.load(path, mmap=True)
    path.write_bytes(b"")
    with pytest.raises(cg.GraphFormatError, match="empty"):
        cg.load(path, mmap=True)


def test_saving_over_a_mapped_file_keeps_the_mapped_arrays_intact(tmp_path):
    path = save(model(), tmp_path / "m.pb")
    h = cg.load(path, mmap=True)
    assert is_mapped(h.value("W"))
    save(model(scale=-2.0), path)  # a new file renamed over the old one: the map keeps the old
    assert np.array_equal(h.value("W"), model().value("W"))  # reads every page: no SIGBUS
    assert np.array_equal(cg.load(path).value("W"), model(scale=-2.0).value("W"))
    save(h, path)  # a mapped graph saved over its own file (the file it maps is gone already)
    h2 = cg.load(path, mmap=True)
    save(h2, path)  # ... and over the very file it maps
    for name in ("W", "b", "V"):
        assert np.array_equal(cg.load(path).value(name), model().value(name))
        assert np.array_equal(h2.value(name), model().value(name))


def test_set_param_on_a_mapped_param_leaves_the_file_alone(tmp_path):
    path = save(model(), tmp_path / "m.pb")
    before = path.read_bytes()
    h = cg.load(path, mmap=True)
    h.set_param("W", h.value("W") + 1.0)
    assert not is_mapped(h.value("W")) and not h.value("W").flags.writeable
    assert h.value("W")[0, 0] == 1.0 and path.read_bytes() == before


def test_state_is_writable_unless_mapped(tmp_path):
    path = save(model(), tmp_path / "m.pb")
    for g in (cg.load(path), cg.loads(cg.dumps(model()))):  # payload, and inline (no copy for params)
        assert all(v.flags.writeable for v in g.state.values())
        assert not any(v.flags.writeable for v in g.params.values())
    g = cg.Graph("state")
    g.param("W", np.ones(4))
    g.state["m"] = np.ones(4)
    h = cg.load(save(g, tmp_path / "s.pb"), mmap=True)
    assert is_mapped(h.state["m"]) and not h.state["m"].flags.writeable  # replace it, do not write in it


@pytest.mark.parametrize("piece", [7, 4096])
def test_tensors_of_many_pieces(tmp_path, monkeypatch, piece):
    """Checksums computed piece by piece equal zlib's of the whole range."""
    g = model()
    expected = cg.dumps(g, inline_limit=0)
    monkeypatch.setattr(cio, "_PIECE", piece)
    path = save(g, tmp_path / "m.pb")
    assert path.read_bytes() == expected
    start, end = payload_range(path, "W")
    msg = pb.Model.FromString(expected[:int.from_bytes(expected[-22:-14], "little")])
    assert msg.graph.node[1].value.payload.crc32 == zlib.crc32(expected[start:end])
    assert cg.load(path).value("W").tobytes() == g.value("W").tobytes()
    flip(path, end - 1)
    with pytest.raises(cg.GraphFormatError, match="param 'W': corrupted"):
        cg.load(path)


CHILD = r"""
import json, sys
import cgraph as cg
def status():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (l.split(":", 1) for l in f) if v.strip().endswith("kB")}
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current size: imports do not count
before = status()["VmRSS"]
g = cg.load(sys.argv[1], mmap=sys.argv[2] == "mmap")
print(json.dumps({"peak": status()["VmHWM"] - before, "nbytes": sum(a.nbytes for a in g.params.values())}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_peak_memory_while_loading_is_the_tensor_bytes(tmp_path):
    g = cg.Graph("mem")
    x = g.input("x", (None, 2048))
    for i in range(3):
        g.param(f"W{i}", np.full((2048, 1024), float(i)))  # 16 MiB each: one read piece or more
    g.param("b", np.ones(1024))  # stays in the message
    g.output("y", x @ g["W0"] + g["b"])
    path = tmp_path / "mem.pb"
    cg.save(g, path)
    peaks = {}
    for how in ("copy", "mmap"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), how], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        r = json.loads(out.stdout)
        assert r["nbytes"] == 48 * 2**20 + 8192
        peaks[how] = r["peak"] / r["nbytes"]
    assert peaks["copy"] <= 1.05, peaks
    assert peaks["mmap"] <= 0.05, peaks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       st.booleans())
def test_mutated_files_mapped_never_raise_anything_else(edits, truncate):
    data = bytearray(cg.dumps(model(), inline_limit=0))
    for at, byte in edits:
        data[at % len(data)] = byte
    if truncate:
        data = data[:edits[0][0] % len(data)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pb"
        path.write_bytes(bytes(data))
        try:
            g = cg.load(path, mmap=True)
        except cg.GraphFormatError as e:
            assert "\n" not in str(e)
            return
        assert all(not v.flags.writeable for v in g.params.values())


@pytest.mark.parametrize("how", ["step", "train_step"])
def test_training_a_mapped_model_copies_each_param_once_and_leaves_the_file_alone(tmp_path, how):
    g = cg.Graph("fit")
    x, y = g.input("x", (None, 8)), g.input("y", (None, 2))
    W = g.param("W", np.linspace(-1, 1, 16).reshape(8, 2))
    g.output("loss", cg.mse(x @ W, y))
    g.state["aux"] = np.ones(4)
    path = save(g, tmp_path / "m.pb")
    before = path.read_bytes()
    h, ref = cg.load(path, mmap=True), cg.load(path)
    assert is_mapped(h.params["W"]) and is_mapped(h.state["aux"])
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(16, 8)), "y": rng.normal(size=(16, 2))}
    for graph in (h, ref):
        opt = cg.optim.Adam(lr=0.1)
        if how == "step":
            opt.step(graph, cg.ReverseMode(graph, of="loss", wrt=["W"]).grad(feeds)[1])
        else:
            cg.optim.TrainStep(graph, opt)(feeds)
    assert not is_mapped(h.params["W"]) and h.params["W"].tobytes() == ref.params["W"].tobytes()
    assert path.read_bytes() == before

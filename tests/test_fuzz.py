"""Fuzzing as part of the suite (tools/fuzz, which runs the same at any count): 2,000 mutated
model files and 1,000 mutated ONNX files, seeded, each tried in a child forked from the tool's
process under an address-space limit and a timeout. A file that loads is run, differentiated in both
modes, saved and reloaded, and drawn; feeds and params must not change. The only outcomes
allowed are loading and cgraph's own one-line errors: no other exception, crash or hang."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks children; reads /proc")


def load_fuzz():
    loader = importlib.machinery.SourceFileLoader("cgraph_fuzz", str(ROOT / "tools" / "fuzz"))
    spec = importlib.util.spec_from_loader("cgraph_fuzz", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cgraph_fuzz"] = module  # (dataclasses look their module up)
    loader.exec_module(module)
    return module


fuzz = load_fuzz()


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    """One run of tools/fuzz in its own process (small, with none of the suite's threads), which
    forks a child per file."""
    try:
        import onnx  # noqa: F401
        onnx_files = 1000
    except ImportError:
        onnx_files = 0
    out = tmp_path_factory.mktemp("fuzz") / "reports.json"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz"), "--models", "2000", "--onnx", str(onnx_files),
                           "--seed", "0", "--jobs", "2", "--batch", "25", "--json", str(out)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=3600)
    assert out.exists(), done.stdout + done.stderr
    return {**json.loads(out.read_text()), "printed": done.stdout, "status": done.returncode}


def test_mutated_model_files(reports):
    report = reports["model"]
    assert report["findings"] == {} and reports["status"] == 0, reports["printed"]
    assert report["files"] == 2000
    counts = report["counts"]
    # the mutations reach past the checksums and the validator, into the executors
    assert counts["load: loaded"] >= 80, reports["printed"]
    assert counts["load: loaded, with control flow"] >= 20, reports["printed"]  # cond, scan, while_loop bodies
    assert min(counts[f"{s}: ok"] for s in ("run", "reverse", "forward", "save and reload")) >= 50
    assert "peak memory of a child" in reports["printed"]


def test_mutated_onnx_files(reports):
    if "onnx" not in reports:
        pytest.skip("the onnx extra is not installed")
    report = reports["onnx"]
    assert report["findings"] == {}, reports["printed"]
    assert report["files"] == 1000
    counts = report["counts"]
    assert counts["load: loaded"] >= 150, reports["printed"]
    assert min(counts[f"{s}: ok"] for s in ("run", "reverse", "forward", "save and reload")) >= 100


def test_the_harness_reports_crashes_hangs_memory_and_stray_exceptions():
    """What the children do wrong is seen: a segfault, a hang, an allocation past the limit,
    an exception that is not cgraph's, a result that is not one line."""
    def job(i: int) -> list:
        if i == 0:
            os.kill(os.getpid(), signal.SIGSEGV)
        if i == 1:
            time.sleep(60)
        if i == 2:
            return [fuzz._stage("alloc", lambda: np.ones(2**31))[0]]  # 16 GiB
        if i == 3:
            return [fuzz._stage("load", lambda: {}["missing"])[0]]
        if i == 4:
            return [fuzz._stage("load", lambda: (_ for _ in ()).throw(fuzz.cg.GraphFormatError("two\nlines")))[0]]
        return [fuzz._stage("load", lambda: None)[0]]

    expected = {"crash: SIGSEGV": 1, "hang": 1, "alloc: raised MemoryError": 1, "load: raised KeyError": 1,
                "load: GraphFormatError of several lines": 1, "load: ok": 1}
    report = fuzz.fuzz("test", job, 6, jobs=2, timeout=3, memory=256)
    assert dict(report.counts) == expected
    assert set(report.findings) == set(report.counts) - {"load: ok"}
    assert not report.ok and "crashes 1, hangs 1" in report.format()
    # a child tries a batch of files in turn: the crash and the hang are blamed on their own files,
    # and the files after them in the batch are still tried
    batched = fuzz.fuzz("test", job, 6, jobs=2, timeout=3, memory=256, batch=4)
    assert dict(batched.counts) == expected and batched.files == 6
    assert {k: i for k, (i, _) in batched.findings.items()} == {
        "crash: SIGSEGV": 0, "hang": 1, "alloc: raised MemoryError": 2, "load: raised KeyError": 3,
        "load: GraphFormatError of several lines": 4}


def test_the_same_seed_makes_the_same_files():
    a, b = fuzz.Files("model", 7), fuzz.Files("model", 7)
    files = [a(i) for i in range(20)]
    assert files == [b(i) for i in range(20)]
    b.seed = 8
    assert files != [b(i) for i in range(20)]


def test_the_model_seeds_use_every_op():
    """The mutations start from files that hold every built-in op (in a graph or a body), so a
    new op's attributes and kernel are fuzzed too."""
    from cgraph.ops.registry import OPS

    used = {n.op for data in fuzz.model_seeds() for h in fuzz.graphs_in(fuzz.cg.loads(data)) for n in h.nodes.values()}
    assert {name for name, op in OPS.items() if not op.user} - used == set()


def test_the_onnx_seeds_import():
    """The ONNX seeds the mutations start from are valid, and every one imports (the
    control-flow export's If, Scan and Loop too)."""
    pytest.importorskip("onnx")
    loaded = {fuzz.cg.onnx.load(data).name for data in fuzz.onnx_seeds()}
    assert loaded == {"every-op", "mlp", "mlp/grad", "images", "control", "ops12", "ops13", "ops18"}


def test_a_loop_that_runs_on_is_stopped_and_counted_apart(monkeypatch):
    """A mutated trip count or condition may make a loop run on: that is the model's meaning, so
    the run is stopped after LOOP_SECONDS and counted as such, not as a hang."""
    monkeypatch.setattr(fuzz, "LOOP_SECONDS", 0.3)
    g = fuzz.cg.Graph("forever")
    a = g.input("a", (2,))
    g.output("loss", fuzz.cg.sum(fuzz.cg.while_loop(lambda c: fuzz.cg.sum(c) > -1.0, lambda c: c + 1.0, a)))
    start = time.monotonic()
    outcomes = dict((what, good) for what, good, _ in fuzz.exercise(g, draw=False))
    assert outcomes["run: a loop still running after 0.3 s, stopped"] is True
    assert all(outcomes.values()) and time.monotonic() - start < 10
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is signal.SIG_DFL

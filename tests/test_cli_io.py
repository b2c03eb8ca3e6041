"""`cgraph info` and `cgraph check`: what they print, exit codes, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cgraph as cg
from cgraph.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model(tmp_path) -> Path:
    g = cg.Graph("iris-mlp")
    x = g.input("x", (None, 3))
    with g.scope("layer0"):
        V = g.param("V", np.zeros((3, 16)))
        m = g.param("m", np.zeros(16), trainable=False)
    W = g.param("W", np.zeros((16, 3), np.float32))
    logits = cg.logistic(x @ V - m) @ cg.cast(W, "float64")
    g.output("logits", logits)
    g.output("p", cg.softmax(logits))
    g.metadata["accuracy"] = "0.97"
    g.state["step"] = np.array(3)
    path = tmp_path / "model.pb"
    cg.save(g, path)
    return path


def test_info_lists_everything(model, capsys):
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "format version 4" in out and "written by cgraph" in out and "plain protobuf" in out
    assert "x  (None, 3) float64" in out
    assert "logits  (None, 3) float64" in out and "p  (None, 3) float64" in out
    assert "params (3, 704 bytes)" in out  # 384 + 128 + 192
    assert "layer0/V  (3, 16) float64  384 bytes" in out
    assert "layer0/m  (16,) float64  128 bytes  (not trainable)" in out
    assert "W  (16, 3) float32  192 bytes" in out
    assert "step  () int64  8 bytes" in out
    assert "matmul  2" in out and "softmax  1" in out and "cast  1" in out
    assert "accuracy: 0.97" in out


def test_check_ok(model, capsys):
    assert main(["check", str(model)]) == 0
    assert "ok (format version 4" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing", "empty"])
def test_check_bad_files_one_line_exit_1(model, damage, capsys):
    data = model.read_bytes()
    if damage == "truncate":
        model.write_bytes(data[:-1])
    elif damage == "flip":
        model.write_bytes(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])
    elif damage == "missing":
        model.unlink()
    else:
        model.write_bytes(b"")
    assert main(["check", str(model)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cgraph check: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_the_installed_command_never_prints_a_traceback(model):
    model.write_bytes(model.read_bytes()[:100])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cmd in ("check", "info"):
        r = subprocess.run([sys.executable, "-m", "cgraph", cmd, str(model)], capture_output=True, text=True,
                           env=env)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and "truncated" in r.stderr and "Traceback" not in r.stderr

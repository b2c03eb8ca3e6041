"""`cgraph render`: formats, default output beside the model, annotations, folding, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import cgraph as cg
from cgraph.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model(tmp_path) -> Path:
    g = cg.Graph("lecture-sin-cos")
    a5 = g.input("w1", shape=()) * g.input("x", shape=()) + g.input("w0", shape=())
    g.output("y1", cg.sin(a5))
    g.output("y2", cg.cos(a5))
    path = tmp_path / "model.pb"
    cg.save(g, path)
    np.savez(tmp_path / "feeds.npz", w0=0.3, w1=-1.2, x=0.7)
    return path


def _svg_text(path: Path) -> str:
    root = ET.parse(path).getroot()
    return " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))


def test_default_svg_beside_the_model(model, capsys):
    assert main(["render", str(model)]) == 0
    out = model.with_suffix(".svg")
    text = _svg_text(out)
    assert all(name in text for name in ("w0", "w1", "x", "mul", "add", "sin", "cos"))
    assert f"wrote {out}: svg" in capsys.readouterr().out


@pytest.mark.parametrize("args, name, magic", [
    (["-o", "{d}/m.png"], "m.png", b"\x89PNG\r\n\x1a\n"),
    (["-o", "{d}/m.pdf"], "m.pdf", b"%PDF"),
    (["-o", "{d}/m.dot"], "m.dot", b"digraph"),
    (["--format", "dot"], "model.dot", b"digraph"),
    (["-o", "{d}/picture", "--format", "png"], "picture", b"\x89PNG"),
])
def test_formats(model, args, name, magic):
    args = [a.format(d=model.parent) for a in args]
    assert main(["render", str(model), *args]) == 0
    assert (model.parent / name).read_bytes().startswith(magic)


def test_reverse_mode_adjoints_and_options(model, tmp_path):
    out = tmp_path / "rev.dot"
    assert main(["render", str(model), "-o", str(out), "--feeds", str(tmp_path / "feeds.npz"), "--mode", "reverse",
                 "--of", "y2", "--rankdir", "LR"]) == 0
    dot = out.read_text()
    assert dot == cg.to_dot(cg.load(model), rankdir="LR", feeds=dict(np.load(tmp_path / "feeds.npz")),
                            mode="reverse", of="y2")
    u = -1.2 * 0.7 + 0.3
    assert f"adjoint {-np.sin(u):.4g}" in dot and "rankdir=LR" in dot
    assert main(["render", str(model), "-o", str(out), "--feeds", str(tmp_path / "feeds.npz"), "--mode", "forward",
                 "--wrt", "w1"]) == 0
    assert "tangent 0.7" in out.read_text()


def test_collapse_and_self_folding_note(tmp_path, capsys):
    g = cg.Graph("scoped")
    h = g.input("x", shape=(3,))
    for i in range(30):
        with g.scope(f"layer{i}"):
            h = cg.tanh(h)
    g.output("y", h)
    cg.save(g, tmp_path / "s.pb")
    assert main(["render", str(tmp_path / "s.pb"), "--format", "dot", "--collapse", "1"]) == 0
    dot = (tmp_path / "s.dot").read_text()
    assert "layer7\\n1 nodes" in dot and "tanh" in dot
    capsys.readouterr()
    assert main(["render", str(tmp_path / "s.pb"), "--format", "dot", "--max-nodes", "10"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("cgraph render: note:") and "31 nodes exceed max_nodes=10" in err


@pytest.mark.parametrize("case", ["missing", "corrupt", "format", "suffix", "mismatch", "feeds", "mode", "of",
                                  "outdir"])
def test_errors_are_one_line(model, tmp_path, case, capsys):
    feeds = str(tmp_path / "feeds.npz")
    args = {
        "missing": [str(tmp_path / "nope.pb")],
        "corrupt": [str(tmp_path / "bad.pb")],
        "format": [str(model), "--format", "jpeg"],
        "suffix": [str(model), "-o", str(tmp_path / "m.jpeg")],
        "mismatch": [str(model), "-o", str(tmp_path / "m.svg"), "--format", "png"],
        "feeds": [str(model), "--feeds", str(model), "--mode", "reverse", "--of", "y2"],
        "mode": [str(model), "--mode", "reverse"],
        "of": [str(model), "--feeds", feeds, "--mode", "reverse", "--of", "nope"],
        "outdir": [str(model), "-o", str(tmp_path / "no" / "dir" / "m.svg")],
    }[case]
    (tmp_path / "bad.pb").write_bytes(model.read_bytes()[:-7])
    assert main(["render", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cgraph render: error:") and "\n" not in err and "Traceback" not in err, err


def test_bad_collapse_is_a_usage_error(model, capsys):
    with pytest.raises(SystemExit) as e:
        main(["render", str(model), "--collapse", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("expected a positive whole number, got '0'")


def test_no_dot_program_one_line_and_dot_output_still_works(model, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(ROOT)}  # no `dot` on PATH
    run = [sys.executable, "-m", "cgraph", "render", str(model)]
    bad = subprocess.run([*run, "-o", str(tmp_path / "m.png")], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "apt-get install graphviz" in bad.stderr
    good = subprocess.run([*run, "-o", str(tmp_path / "m.dot")], capture_output=True, text=True, env=env, timeout=120)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "m.dot").read_text().startswith("digraph")

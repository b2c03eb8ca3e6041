"""examples/digits_cnn.py: a shorter run still reaches 97% on the held-out quarter, and the
example's own checks (a fresh process reloads the model and predicts identically, the drawing,
onnxruntime predicting the same classes) pass."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import digits_cnn  # noqa: E402


def test_a_shorter_run_reaches_97_percent():
    g, history, acc = digits_cnn.train(epochs=12, progress=False)
    assert history.epochs == 12 and history.loss[-1] < history.loss[0] / 10
    assert acc >= 0.97, acc


def test_the_example_runs_end_to_end(tmp_path, capsys):
    digits_cnn.main(["--epochs", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "reloaded in a fresh process, it predicts identically: True" in out
    assert "onnxruntime predicts the same classes: True" in out
    assert {p.name for p in tmp_path.iterdir()} >= {"digits_cnn.pb", "digits_cnn.svg", "digits_cnn.onnx"}

"""A small convolutional network on scikit-learn's 8x8 digits, end to end: train, save, reload
in a fresh process, render, export to ONNX and run in onnxruntime.

The data: the 1,797 8x8 images of handwritten digits bundled with scikit-learn (no download),
scaled to [0, 1]; a quarter, drawn at random with a fixed seed, is held out. The model (float32):
conv 3x3 (16 channels, "same" padding), relu, 2x2 max pooling, conv 3x3 (32 channels), relu,
2x2 max pooling, a dense layer to the 10 classes; softmax cross-entropy; Adam (lr 0.01) on
minibatches of 64 with `cg.fit`.

Writes to out/ (git-ignored): digits_cnn.pb (the trained model), digits_cnn.svg (its graph) and
digits_cnn.onnx. Needs scikit-learn (`.venv/bin/pip install -e '.[examples]'`); the ONNX part
needs the onnx extra.

Run: python examples/digits_cnn.py [--epochs 30] [--out out]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import cgraph as cg
from cgraph.train import accuracy

TOP = Path(__file__).resolve().parents[1]


def load_data(seed: int = 0, dtype: str = "float32") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, test): {"x": (N, 1, 8, 8) in [0, 1], "y": one-hot (N, 10)}, test a random quarter."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn: .venv/bin/pip install -e '.[examples]'") from None
    digits = load_digits()
    x = (digits.images / 16.0)[:, None].astype(dtype)
    y = np.eye(10, dtype=dtype)[digits.target]
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[: len(x) // 4], order[len(x) // 4:]
    return {"x": x[train], "y": y[train]}, {"x": x[test], "y": y[test]}


def build(dtype: str = "float32", seed: int = 0) -> cg.Graph:
    """The CNN as a Graph: inputs "x" (None, 1, 8, 8) and "y" (None, 10), outputs "loss" and
    "logits", params conv0/W, conv0/b, conv1/W, conv1/b, dense0/W, dense0/b (He and Glorot
    initialisation, seeded)."""
    g = cg.Graph("digits-cnn")
    x = g.input("x", (None, 1, 8, 8), dtype)
    y = g.input("y", (None, 10), dtype)
    h = cg.nn.max_pool2d(cg.relu(cg.nn.conv2d(x, 16, 3, padding="same", seed=seed)), 2)  # (N, 16, 4, 4)
    h = cg.nn.max_pool2d(cg.relu(cg.nn.conv2d(h, 32, 3, padding="same", seed=seed)), 2)  # (N, 32, 2, 2)
    logits = cg.nn.dense(cg.nn.flatten(h), 10, seed=seed)
    g.output("loss", cg.softmax_cross_entropy(logits, y))
    g.output("logits", logits)
    return g


def train(epochs: int = 30, seed: int = 0, progress: bool = True) -> tuple[cg.Graph, cg.train.History, float]:
    """The trained model, its history and its accuracy on the held-out quarter."""
    train_data, test = load_data(seed)
    g = build(seed=seed)
    history = cg.fit(g, train_data, cg.optim.Adam(lr=0.01), epochs=epochs, batch_size=64, seed=seed,
                     progress=progress)
    return g, history, accuracy(g, test["x"], test["y"])


RELOAD = """
import sys, numpy as np, cgraph as cg
g = cg.load(sys.argv[1])
np.save(sys.argv[3], cg.predict(g, np.load(sys.argv[2])))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30, help="passes over the training data (default 30)")
    ap.add_argument("--out", type=Path, default=TOP / "out", help="where to write the files (default out/)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    g, history, acc = train(args.epochs)
    print(f"trained {history.epochs} epochs ({history.steps} Adam steps) in {history.seconds:.1f} s; "
          f"loss {history.loss[-1]:.4f}; accuracy on the held-out quarter {acc:.4f}")
    g.metadata["test_accuracy"] = f"{acc:.4f}"

    _, test = load_data()
    model = args.out / "digits_cnn.pb"
    cg.save(g, model)
    np.save(args.out / "digits_test_x.npy", test["x"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TOP), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", RELOAD, str(model), str(args.out / "digits_test_x.npy"),
                    str(args.out / "digits_reloaded.npy")], check=True, env=env)
    same = np.array_equal(np.load(args.out / "digits_reloaded.npy"), cg.predict(g, test["x"]))
    print(f"saved {model}; reloaded in a fresh process, it predicts identically: {same}")
    if not same:
        raise SystemExit("the reloaded model's predictions differ")

    svg = args.out / "digits_cnn.svg"
    cg.render(g, svg)
    print(f"rendered the graph to {svg}")

    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed, so no ONNX check: `.venv/bin/pip install -e '.[onnx]'`")
        return
    path = args.out / "digits_cnn.onnx"
    cg.onnx.export(g, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(["logits"], {"x": test["x"], "y": test["y"]})[0]
    ours = cg.predict(g, test["x"])
    agree = np.array_equal(theirs.argmax(1), ours.argmax(1))
    print(f"exported {path}; onnxruntime predicts the same classes: {agree} "
          f"(logits within {np.max(np.abs(theirs - ours)):.1e})")
    if not agree:
        raise SystemExit("onnxruntime's predictions differ")


if __name__ == "__main__":
    main()

"""The lecture's Iris MLP, end to end: train, save, reload, check, render, plot.

Exactly the lecture's model (its worked example): petal length and width,
standardised, plus a bias column (D = 3); M = 16 logistic hidden units; C = 3 classes; softmax
cross-entropy averaged over the N = 150 rows; full-batch gradient descent with lr = 0.1 from
weights drawn as `randn * .01`, stopping when ||dW|| < 1e-9 or after max_iters steps (the
lecture's 100000 with `--max-iters 100000`; 20000 by default, which is quicker and ends at the
same train accuracy). The gradients come from the graph (reverse mode), not from hand-written
code.

Writes to out/ (git-ignored): iris.pb (the trained model, reloaded and checked to predict
identically), iris.svg (the graph), and, if matplotlib is installed, iris.png (the decision
boundaries and the loss curve). To get matplotlib: `.venv/bin/pip install -e '.[plot]'`.

Run: python examples/iris_mlp.py [--max-iters 20000] [--out out]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from lecture_iris import lecture_data, load_iris

import cgraph as cg
from cgraph.train import accuracy

TOP = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-iters", type=int, default=20_000, help="at most this many steps (default 20000)")
    ap.add_argument("--out", type=Path, default=TOP / "out", help="where to write the files (default out/)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    X, Y, labels = lecture_data()
    g = cg.nn.mlp([3, 16, 3], hidden="logistic", loss="softmax_cross_entropy", bias=False,
                  init="normal", scale=0.01, seed=0, name="iris-mlp")  # bias: X's column of ones
    data = {"x": X, "y": Y}

    history = cg.fit(g, data, cg.optim.GD(lr=0.1), epochs=args.max_iters,
                     stop=lambda e: np.linalg.norm(e.grads["layer1/W"]) < 1e-9)  # ||dW|| < eps
    why = "||dW|| < 1e-9" if history.stopped else "max_iters"
    print(f"trained {history.steps} steps in {history.seconds:.2f} s ({why}); "
          f"loss {history.loss[-1]:.6f}, train accuracy {accuracy(g, X, Y):.3f}")

    model = args.out / "iris.pb"
    cg.save(g, model)
    g2 = cg.load(model)
    same = np.array_equal(cg.predict(g, X), cg.predict(g2, X))
    print(f"saved {model}; reloaded, it predicts identically: {same}")
    if not same:
        raise SystemExit("the reloaded model's predictions differ")

    svg = args.out / "iris.svg"
    cg.render(g, svg)
    print(f"rendered the graph to {svg}")
    plot(g, X, labels, history.loss, args.out / "iris.png")


def plot(g: cg.Graph, X: np.ndarray, labels: np.ndarray, losses: list[float], path: Path) -> None:
    """Decision boundaries over the standardised petal plane, and the loss per step."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed, so no plot: `.venv/bin/pip install -e '.[plot]'` to get it")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, names = load_iris()
    lo, hi = X[:, :2].min(0) - 0.5, X[:, :2].max(0) + 0.5
    u, v = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 300))
    grid = np.column_stack([u.ravel(), v.ravel(), np.ones(u.size)])
    cls = np.argmax(cg.predict(g, grid, batch_size=20_000), axis=1).reshape(u.shape)

    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = [plt.cm.Set1(c) for c in range(len(names))]
    ax.contourf(u, v, cls, levels=np.arange(len(names) + 1) - 0.5, colors=colors, alpha=0.2)
    for c, name in enumerate(names):
        ax.scatter(*X[labels == c, :2].T, s=14, label=name, color=colors[c])
    ax.set(xlabel="petal length (standardised)", ylabel="petal width (standardised)",
           title="decision boundaries, M = 16 logistic units")
    ax.legend(loc="upper left")
    ax_loss.semilogy(np.arange(1, len(losses) + 1), losses)
    ax_loss.set(xlabel="gradient descent step", ylabel="softmax cross-entropy (mean over N)", title="loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plotted the decision boundaries and the loss to {path}")


if __name__ == "__main__":
    main()

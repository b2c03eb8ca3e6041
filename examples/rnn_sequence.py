"""An Elman RNN written with cg.scan learns to predict a noisy sine wave's next value.

The recurrence h_t = tanh(h_{t-1} W + x_t U + b), y_t = h_t V + c runs as one scan node: the
graph (and the file) has the size of one step, whatever the sequence length, and the gradient
is a reverse scan. Trained with `fit` (Adam, minibatches of sequences), then saved, reloaded
(predicting bit for bit the same) and drawn with the body inside its loop.

Run: python examples/rnn_sequence.py [--steps T] [--epochs E] [--out DIR]
"""

import argparse
from pathlib import Path

import numpy as np

import cgraph as cg


def sequences(n: int, T: int, rng: np.random.Generator, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """n noisy sine waves of random phase and frequency: inputs (n, T, 1), targets the next values."""
    t = np.arange(T + 1)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    freq = rng.uniform(0.15, 0.35, (n, 1))
    wave = np.sin(freq * t + phase) + noise * rng.standard_normal((n, T + 1))
    return wave[:, :-1, None], wave[:, 1:, None]


def model(T: int, H: int = 16, seed: int = 0) -> cg.Graph:
    rng = np.random.default_rng(seed)
    g = cg.Graph("rnn-sequence")
    x = g.input("x", (None, T, 1))  # batch-major, as fit slices feeds along their first axis
    y = g.input("y", (None, T, 1))
    W = g.param("W", rng.normal(0, 1 / np.sqrt(H), (H, H)))
    U = g.param("U", rng.normal(0, 1.0, (1, H)))
    b = g.param("b", np.zeros(H))
    V = g.param("V", rng.normal(0, 1 / np.sqrt(H), (H, 1)))
    c = g.param("c", np.zeros(1))
    xs = cg.transpose(x, (1, 0, 2))  # (T, batch, 1): the scan runs along time

    def step(h, xt):
        h = cg.tanh(h @ W + xt @ U + b)
        return h, h @ V + c

    h0 = xs[0] @ g.constant("h0", np.zeros((1, H)))  # zeros of (batch, H), the batch known at run time
    _, preds = cg.scan(step, h0, xs)
    g.output("pred", cg.transpose(preds, (1, 0, 2)))
    g.output("loss", cg.mse(cg.reshape(preds, (-1, 1)), cg.reshape(cg.transpose(y, (1, 0, 2)), (-1, 1))))
    return g


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="sequence length T")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    X, Y = sequences(256, args.steps, rng)
    Xt, Yt = sequences(64, args.steps, np.random.default_rng(1))
    g = model(args.steps)
    history = cg.fit(g, {"x": X, "y": Y}, cg.optim.Adam(lr=0.01), epochs=args.epochs, batch_size=32, progress=False)
    test = cg.Evaluator(g, outputs=["loss"]).run({"x": Xt, "y": Yt})["loss"]
    last = 0.5 * np.mean((Xt - Yt) ** 2)  # predicting that the wave stays where it is
    print(f"{history.steps} Adam steps in {history.seconds:.2f} s; {len(g.nodes)} nodes for {args.steps} time steps")
    print(f"test loss {float(test):.5f} (repeating the last value: {last:.5f}; "
          f"the noise alone: {0.5 * 0.05**2 * 2:.5f})")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    cg.save(g, out / "rnn_sequence.pb")
    h = cg.load(out / "rnn_sequence.pb")
    same = np.array_equal(cg.Evaluator(h, outputs=["pred"]).run({"x": Xt})["pred"],
                          cg.Evaluator(g, outputs=["pred"]).run({"x": Xt})["pred"])
    print(f"saved {out / 'rnn_sequence.pb'} ({(out / 'rnn_sequence.pb').stat().st_size} bytes); reloaded, predicts "
          f"{'the same, bit for bit' if same else 'DIFFERENTLY'}")
    try:
        cg.render(g, out / "rnn_sequence.svg")
        print(f"drawn to {out / 'rnn_sequence.svg'}")
    except cg.CgraphError as e:  # no Graphviz 'dot' program
        cg.render(g, out / "rnn_sequence.dot")
        print(f"drawn to {out / 'rnn_sequence.dot'} ({e})")
    return {"test": float(test), "last": float(last), "same": float(same)}


if __name__ == "__main__":
    main()

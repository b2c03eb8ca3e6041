"""A deeper ReLU net made easy to optimise (the lecture's section 5): skip connections and
batch normalisation, against the same depth without them.

Three interleaved spirals, 2 inputs, five hidden ReLU layers of 32 units, 3 classes, trained
with momentum. The plain net starts from the lecture's small random weights and does not move
from chance: the signal, and so the gradient, shrinks layer by layer. With He initialisation,
skip connections (x_{l+1} = relu(bn(x_l W)) + x_l) and batch norm (batch statistics while
training, running statistics for inference), the same optimizer fits the spirals. Accuracy is
measured in inference mode (cg.predict uses the model's "logits_eval" output). (Adam, which
rescales each step, gets the plain net moving too, but more slowly.)

Run: python examples/deep_relu_skip_bn.py
"""

import numpy as np

import cgraph as cg
from cgraph.train import accuracy


def spirals(n_per_class: int = 150, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = np.tile(np.linspace(0.1, 1.0, n_per_class), classes)
    c = np.repeat(np.arange(classes), n_per_class)
    angle = 2 * np.pi * c / classes + 3.5 * r + 0.15 * rng.standard_normal(r.size)
    return np.column_stack([r * np.cos(angle), r * np.sin(angle)]), np.eye(classes)[c]


x, y = spirals()
sizes = [2, 32, 32, 32, 32, 32, 3]
runs = {
    "plain (normal init, scale 0.01)": cg.nn.mlp(sizes, hidden="relu", init="normal", seed=0, name="plain"),
    "skip + batch norm (He init)": cg.nn.mlp(sizes, hidden="relu", init="he", skip=True, batch_norm=True,
                                             seed=0, name="skip-bn"),
}
for label, g in runs.items():
    h = cg.fit(g, {"x": x, "y": y}, cg.optim.Momentum(lr=0.02, beta=0.9), epochs=60, batch_size=64, seed=0)
    print(f"{label:32s} loss {h.loss[0]:.3f} -> {h.loss[-1]:.3f}, accuracy {accuracy(g, x, y):.3f} "
          f"({h.steps} steps, {h.seconds:.1f} s)")

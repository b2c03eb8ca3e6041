"""Binary classification with the logistic output: is an Iris flower a virginica?

The lecture's binary row: one output unit, loss y log(1+e^-u) + (1-y) log(1+e^u) computed from
the logit u (cg.binary_cross_entropy, stable for any u). Petal length and width, standardised;
a tanh hidden layer; momentum on shuffled minibatches; accuracy recorded after every epoch.

Run: python examples/binary_classification.py
"""

import numpy as np
from lecture_iris import load_iris

import cgraph as cg

features, labels, names = load_iris()
petal = features[:, 2:4]
x = (petal - petal.mean(0)) / petal.std(0)
y = (labels == names.index("virginica")).astype(float)[:, None]  # (N, 1): one output unit

g = cg.nn.mlp([2, 8, 1], hidden="tanh", loss="binary_cross_entropy", init="glorot", seed=0,
              name="iris-virginica")
history = cg.fit(g, {"x": x, "y": y}, cg.optim.Momentum(lr=0.1, beta=0.9), epochs=150, batch_size=32,
                 seed=0, metric="accuracy")

p = 1 / (1 + np.exp(-cg.predict(g, x)))  # the logistic of the logit: P(virginica)
print(f"{history.steps} momentum steps ({history.epochs} epochs of 32-row batches) in {history.seconds:.2f} s")
print(f"loss {history.loss[0]:.4f} -> {history.loss[-1]:.4f}; "
      f"accuracy after epoch 1: {history.metric[0]:.3f}, at the end: {history.metric[-1]:.3f}")
print(f"mean P(virginica): {p[y[:, 0] == 1].mean():.3f} for virginica, {p[y[:, 0] == 0].mean():.3f} for the others")

"""Regression with the mean squared error: a tanh MLP fits y = sin(3x) from noisy samples.

The lecture's regression row: identity output, L = 0.5 ||y - yhat||^2 (cg.mse, the mean over
rows). Adam, full batch; the fit is compared with the noise level and with a straight line.

Run: python examples/regression_mse.py
"""

import numpy as np

import cgraph as cg

rng = np.random.default_rng(0)
x = rng.uniform(-1.5, 1.5, size=(200, 1))
noise = 0.1
y = np.sin(3 * x) + noise * rng.standard_normal(x.shape)

g = cg.nn.mlp([1, 32, 1], hidden="tanh", loss="mse", init="glorot", seed=0, name="sine-regression")
history = cg.fit(g, {"x": x, "y": y}, cg.optim.Adam(lr=0.02), epochs=2000)

line = np.polyval(np.polyfit(x[:, 0], y[:, 0], 1), x)
grid = np.linspace(-1.5, 1.5, 7)[:, None]
print(f"{history.steps} Adam steps in {history.seconds:.2f} s")
print(f"training loss 0.5 * mean squared error: {history.loss[-1]:.5f} "
      f"(noise alone: {0.5 * noise**2:.5f}, a straight line: {0.5 * np.mean((line - y) ** 2):.5f})")
print("   x     sin(3x)   mlp(x)")
for xi, pi in zip(grid[:, 0], cg.predict(g, grid)[:, 0], strict=True):
    print(f"{xi:5.2f}  {np.sin(3 * xi):8.4f}  {pi:8.4f}")

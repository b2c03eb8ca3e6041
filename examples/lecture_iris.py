"""The lecture's Iris data and its hand-written numpy MLP: the worked example of the lecture
"Gradient Computation & Automatic Differentiation".

Used by examples/iris_mlp.py, the tests and tools/bench/iris_training.py as the reference that
cgraph's graph-derived gradients and training loop must reproduce.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IRIS_CSV = Path(__file__).resolve().parent / "data" / "iris.csv"


def load_iris(path: Path = IRIS_CSV) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(150 x 4 features, class index per row, class names) from the committed CSV."""
    features = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2, 3))
    species = np.loadtxt(path, delimiter=",", skiprows=1, usecols=4, dtype=str)
    names = sorted(set(species))
    return features, np.searchsorted(names, species), names


def lecture_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lecture's inputs: petal length and width, standardised, plus a bias column (D = 3);
    one-hot targets (C = 3); and the class of each row."""
    features, labels, _ = load_iris()
    petal = features[:, 2:4]
    petal = (petal - petal.mean(0)) / petal.std(0)
    X = np.column_stack([petal, np.ones(len(petal))])
    return X, np.eye(3)[labels], labels


# ---- the lecture's hand-written model: V is D x M (input to hidden), W is M x C -------------

def logistic(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def logsumexp(U: np.ndarray) -> np.ndarray:
    m = U.max(1, keepdims=True)
    return np.log(np.sum(np.exp(U - m), 1)) + m[:, 0]


def softmax(U: np.ndarray) -> np.ndarray:
    e = np.exp(U - U.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def cost(X: np.ndarray, Y: np.ndarray, W: np.ndarray, V: np.ndarray) -> float:
    Q = X @ V
    Z = logistic(Q)
    U = Z @ W
    return float(-np.mean(np.sum(U * Y, 1) - logsumexp(U)))


def gradients(X: np.ndarray, Y: np.ndarray, W: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Z = logistic(X @ V)
    N = X.shape[0]
    dY = softmax(Z @ W) - Y
    dW = Z.T @ dY / N
    dZ = dY @ W.T
    dV = X.T @ (dZ * Z * (1 - Z)) / N
    return dW, dV


def GD(X: np.ndarray, Y: np.ndarray, W: np.ndarray, V: np.ndarray, lr: float = 0.1, eps: float = 1e-9,
       max_iters: int = 100000, record: bool = False) -> tuple[np.ndarray, np.ndarray, int, list[float]]:
    """The lecture's loop, from given initial W and V (it draws them as randn * .01): the final
    W and V, the number of steps t, and (with `record`) the cost before each step."""
    dW = np.inf * np.ones_like(W)
    t = 0
    losses = []
    while np.linalg.norm(dW) > eps and t < max_iters:
        if record:
            losses.append(cost(X, Y, W, V))
        dW, dV = gradients(X, Y, W, V)
        W = W - lr * dW
        V = V - lr * dV
        t += 1
    return W, V, t, losses

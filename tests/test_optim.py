"""cg.optim: each update rule against its formula and against torch.optim, state kept in
g.state (so training resumes exactly), and each optimizer lowering the Iris loss."""

import sys
from pathlib import Path

import numpy as np
import pytest

import cgraph as cg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from lecture_iris import lecture_data  # noqa: E402


def _graph_with(p0):
    g = cg.Graph("opt")
    g.param("w", p0)
    return g


def _grads(k, shape=(3, 2)):
    return np.random.default_rng(100 + k).normal(size=shape)


def test_gd_is_the_lecture_update():
    p0 = np.random.default_rng(0).normal(size=(3, 2))
    g = _graph_with(p0)
    cg.optim.GD(lr=0.1).step(g, {"w": _grads(0)})
    assert np.array_equal(g.params["w"], p0 - 0.1 * _grads(0))  # W = W - lr * dW, bit for bit


@pytest.mark.parametrize("make_ours, make_torch", [
    (lambda: cg.optim.Momentum(lr=0.05, beta=0.8),
     lambda torch, ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8)),
    (lambda: cg.optim.Adam(lr=0.01, b1=0.85, b2=0.99, eps=1e-7),
     lambda torch, ps: torch.optim.Adam(ps, lr=0.01, betas=(0.85, 0.99), eps=1e-7)),
])
def test_matches_torch_optim(make_ours, make_torch):
    torch = pytest.importorskip("torch")
    p0 = np.random.default_rng(1).normal(size=(3, 2))
    g, opt = _graph_with(p0), make_ours()
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = make_torch(torch, [tp])
    for k in range(6):
        opt.step(g, {"w": _grads(k)})
        tp.grad = torch.tensor(_grads(k))
        topt.step()
    np.testing.assert_allclose(g.params["w"], tp.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert int(g.state[f"optim/{opt.kind}/t"]) == 6


def test_state_lives_in_the_graph_and_resumes():
    """A fresh optimizer on a graph carrying the state continues exactly like the first one."""
    p0 = np.random.default_rng(2).normal(size=(3, 2))
    a, b = _graph_with(p0), _graph_with(p0)
    opt = cg.optim.Adam(lr=0.02)
    for k in range(5):
        opt.step(a, {"w": _grads(k)})
    for k in range(3):
        opt.step(b, {"w": _grads(k)})
    assert set(b.state) == {"optim/Adam/m/w", "optim/Adam/v/w", "optim/Adam/t"}
    c = _graph_with(b.params["w"])  # what a reload gives: params, state and metadata
    c.state.update({k: v.copy() for k, v in b.state.items()})
    c.metadata.update(b.metadata)
    resumed = cg.optim.from_graph(c)
    assert isinstance(resumed, cg.optim.Adam) and resumed.config() == opt.config()
    for k in range(3, 5):
        resumed.step(c, {"w": _grads(k)})
    assert np.array_equal(c.params["w"], a.params["w"])
    cg.optim.Momentum(lr=0.1).step(c, {"w": _grads(0)})  # another kind: Adam's state goes
    assert set(c.state) == {"optim/Momentum/v/w", "optim/Momentum/t"}
    np.testing.assert_array_equal(c.state["optim/Momentum/v/w"], _grads(0))
    cg.optim.reset(c)
    assert not c.state and cg.optim.from_graph(c) is None


def test_step_errors_name_the_param():
    g = _graph_with(np.zeros((3, 2)))
    with pytest.raises(cg.GraphError, match="'v' is not a param"):
        cg.optim.GD(0.1).step(g, {"v": np.zeros((3, 2))})
    with pytest.raises(cg.ShapeError, match="gradient of 'w' has shape"):
        cg.optim.Momentum(0.1).step(g, {"w": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="lr must be > 0"):
        cg.optim.Adam(lr=0.0)
    with pytest.raises(ValueError, match="beta must be"):
        cg.optim.Momentum(lr=0.1, beta=1.0)
    g.metadata["optim"] = '{"kind": "Nesterov", "lr": 1}'
    with pytest.raises(cg.GraphError, match="not an optimizer"):
        cg.optim.from_graph(g)


@pytest.mark.parametrize("opt", [cg.optim.GD(lr=0.1), cg.optim.Momentum(lr=0.05, beta=0.9),
                                 cg.optim.Adam(lr=0.01)], ids=repr)
def test_each_optimizer_lowers_the_iris_loss(opt):
    X, Y, labels = lecture_data()
    g = cg.nn.mlp([3, 16, 3], bias=False, seed=0)
    h = cg.fit(g, {"x": X, "y": Y}, opt, epochs=300, progress=False)
    assert h.loss[0] == pytest.approx(np.log(3), abs=1e-3)  # tiny weights: uniform predictions
    assert h.loss[-1] < 0.6 * h.loss[0]
    assert np.all(np.diff(h.loss[-50:]) < 0)  # still going down, no oscillation at the end

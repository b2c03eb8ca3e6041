"""A training step as one plan (cg.optim.TrainStep, ReverseMode.apply): the loss, the gradients
and the optimizer's in-place update in one compiled plan equal the unfused step bit for bit,
for every optimizer, over several steps and batch sizes, with batch norm; each param is updated
only once nothing reads it any more; gradients never pile up. (Planning time is measured by
tools/bench/speed.py, never by a test.)"""

import numpy as np
import pytest

import cgraph as cg

OPTIMIZERS = [lambda: cg.optim.GD(lr=0.1), lambda: cg.optim.Momentum(lr=0.05, beta=0.9),
              lambda: cg.optim.Adam(lr=0.01)]


def model(batch_norm: bool) -> cg.Graph:
    g = cg.nn.mlp([4, 8, 3], hidden="tanh", loss="softmax_cross_entropy", seed=1, batch_norm=batch_norm)
    return g


def data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 4)), "y": np.eye(3)[rng.integers(0, 3, n)]}


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["GD", "Momentum", "Adam"])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch_norm"])
def test_the_fused_step_equals_the_unfused_one_bit_for_bit(make, batch_norm):
    fused, plain = model(batch_norm), model(batch_norm)
    step = cg.optim.TrainStep(fused, make())
    opt = make()
    rm = cg.ReverseMode(plain, of="loss", wrt=plain.trainable)
    for k, n in enumerate([16, 16, 5, 9, 16, 1 if not batch_norm else 2]):
        feeds = data(n, seed=k)
        got = step(feeds)
        value, grads = rm.grad(feeds)
        opt.step(plain, grads)
        assert got == float(value)
        for name in plain.params:
            assert fused.params[name].tobytes() == plain.params[name].tobytes(), (k, name)
        for key in plain.state:
            assert fused.state[key].tobytes() == plain.state[key].tobytes(), (k, key)


def test_fit_uses_the_fused_step_and_matches_the_unfused_loop():
    X = data(30)
    g = model(True)
    h = model(True)
    cg.fit(g, X, cg.optim.Adam(lr=0.01), epochs=3, batch_size=8, progress=False)
    # the same epochs by hand, unfused: minibatches as fit draws them
    opt = cg.optim.Adam(lr=0.01)
    rm = cg.ReverseMode(h, of="loss", wrt=h.trainable)
    stats, momentum = cg.nn.running_stats(h)
    ev = cg.Evaluator(h, outputs=list(stats.values()))
    for epoch in range(3):
        order = np.random.default_rng([0, epoch]).permutation(30)
        for i in range(0, 30, 8):
            batch = {k: v[order[i:i + 8]] for k, v in X.items()}
            batch_stats = ev.run(batch)
            _, grads = rm.grad(batch)
            opt.step(h, grads)
            for p, out in stats.items():
                h.set_param(p, (1.0 - momentum) * h.params[p] + momentum * batch_stats[out])
    for name in g.params:
        assert g.params[name].tobytes() == h.params[name].tobytes(), name


def test_params_change_in_place_and_users_are_told():
    g = model(False)
    W = g.params["layer0/W"]
    before = W.copy()
    cg.optim.TrainStep(g, cg.optim.GD(lr=0.1))(data(8))
    assert g.params["layer0/W"] is W and not np.array_equal(W, before)  # the documented in-place rule
    with pytest.raises(ValueError):
        W[0, 0] = 1.0  # still read-only to users


def test_a_param_that_cannot_be_written_is_copied_once():
    g = cg.Graph()
    x = g.input("x", (None, 2))
    frozen = np.frombuffer(np.ones(2).tobytes(), dtype=np.float64)  # read-only memory, like a mapped file
    w = g.add_leaf("param", "w", (2,), np.float64, frozen)
    g.output("loss", cg.sum(cg.square(x * w)))
    step = cg.optim.TrainStep(g, cg.optim.GD(lr=0.1))
    step({"x": np.ones((3, 2))})
    assert g.params["w"] is not frozen and np.allclose(g.params["w"], 1 - 0.1 * 6)
    assert np.array_equal(frozen, np.ones(2))


def test_updates_wait_for_every_reader_of_the_param_and_its_views():
    """W is read by the forward sweep, transposed (a view) in the backward sweep, and tied in
    two places: its update must come after all of them, or the gradients would be wrong."""
    g = cg.Graph()
    x = g.input("x", (None, 3))
    W = g.param("W", np.arange(9.0).reshape(3, 3) / 10)
    h = cg.tanh(x @ W)
    g.output("loss", cg.sum(cg.tanh(h @ W.T) * (h @ W)))
    X = np.random.default_rng(0).normal(size=(4, 3))
    _, grads = cg.ReverseMode(g, "loss", ["W"]).grad({"x": X})
    expected = g.params["W"] - 0.5 * grads["W"]
    seen = {}

    def update(p, grad):
        seen["grad"] = grad.copy()
        p.flags.writeable = True
        p -= 0.5 * grad
        p.flags.writeable = False

    rm = cg.ReverseMode(g, "loss", ["W"])
    rm.apply({"x": X}, {"W": update})
    np.testing.assert_array_equal(seen["grad"], grads["W"])
    np.testing.assert_allclose(g.params["W"], expected, rtol=1e-15)
    plan = next(iter(rm._update_plans.values()))
    names = [s.name for s in plan.steps]
    reads = [i for i, s in enumerate(plan.steps) if s.update < 0 and ("W" in s.args or any(
        a in {t.name for t in plan.steps if t.view and t.args[0] == "W"} for a in s.args))]
    assert names.index("update:W") > max(reads)
    assert rm.stats.peak_bytes == rm.stats.predicted_peak_bytes


def test_gradients_never_pile_up():
    """On a chain, the fused step holds a gradient or two at a time, where the gradient plan
    ends holding them all."""
    g = cg.Graph("chain")
    h = g.input("x", (None, 64))
    rng = np.random.default_rng(0)
    for i in range(12):
        with g.scope(f"layer{i}"):
            h = cg.tanh(h @ g.param("W", rng.normal(0, 0.1, (64, 64))))
    g.output("loss", cg.mean(h))
    X = rng.normal(size=(32, 64))
    rm = cg.ReverseMode(g, "loss", g.trainable)
    rm.grad({"x": X})
    full = rm.stats.peak_bytes
    step = cg.optim.TrainStep(g, cg.optim.GD(lr=0.01))
    step({"x": X})
    fused = step.rm.stats.peak_bytes
    assert fused == step.rm.stats.predicted_peak_bytes
    activations, grad = 13 * 32 * 64 * 8, 64 * 64 * 8
    assert full >= 12 * grad  # every gradient is held at the end of the gradient plan
    assert fused <= activations + 2 * grad, (full, fused)  # the fused step: a gradient or two at a time


def test_apply_checks_its_names_and_runs_under_a_budget_too():
    g = model(False)
    rm = cg.ReverseMode(g, "loss", ["layer0/W"])
    with pytest.raises(cg.DerivativeError, match="not a param among wrt"):
        rm.apply(data(4), {"layer1/W": lambda p, g: None})
    budget = cg.ReverseMode(g, "loss", ["layer0/W"], memory_budget=2**20)
    got = {}
    value = budget.apply(data(4), {"layer0/W": lambda p, grad: got.setdefault("g", grad.copy())})
    ref_value, ref = rm.grad(data(4))
    assert value == ref_value and np.array_equal(got["g"], ref["layer0/W"])

"""Every op's derivative rules, both modes, against central differences of an independent
numpy implementation, inside a scaled expression (3 * op, so a rule that drops the incoming
derivative fails); the dot-product identity <u, J v> == <J^T u, v>; second order through
gradient_graph; and torch, when installed, as a second independent oracle."""

import numpy as np
import pytest
from specs import build_graph, case_id, cases

import cgraph as cg

SCALE = 3.0
CASES = [c for c in cases() if c[0].smooth]


def diff_args(spec, shapes):
    return [i for i in range(len(shapes))
            if i not in spec.nondiff_args and (spec.domain[i:i + 1] or ("real",))[0] != "bool"]


def numeric_jacobian(f, xs, i, eps=1e-6):
    """d f(*xs) / d xs[i] by central differences, shape out.shape + xs[i].shape."""
    out = np.asarray(f(*xs))
    J = np.empty((out.size, xs[i].size))
    for k in range(xs[i].size):
        cols = []
        for s in (1, -1):
            x = xs[i].copy().ravel()
            x[k] += s * eps
            cols.append(np.asarray(f(*xs[:i], x.reshape(xs[i].shape), *xs[i + 1:])).ravel())
        J[:, k] = (cols[0] - cols[1]) / (2 * eps)
    return J.reshape(out.shape + xs[i].shape)


def setup(case, seed=0):
    spec, shapes = case
    xs = spec.draw(np.random.default_rng(seed), shapes)
    g = build_graph(spec, shapes, scale=SCALE)
    feeds = {f"a{i}": x for i, x in enumerate(xs)}
    return spec, shapes, xs, g, feeds


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_both_modes_match_central_differences(case):
    spec, shapes, xs, g, feeds = setup(case)
    for i in diff_args(spec, shapes):
        numeric = numeric_jacobian(lambda *a: SCALE * spec.ref(*a), xs, i)
        for mode in ("forward", "reverse"):
            J = cg.jacobian(g, feeds, of="out", wrt=f"a{i}", mode=mode)
            assert J.shape == numeric.shape
            np.testing.assert_allclose(J, numeric, rtol=1e-6, atol=1e-6, err_msg=f"{mode} mode, arg {i}")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_dot_product_identity(case):
    spec, shapes, xs, g, feeds = setup(case, seed=1)
    rng = np.random.default_rng(2)
    wrt = [f"a{i}" for i in diff_args(spec, shapes)]
    v = {w: rng.normal(size=feeds[w].shape) for w in wrt}
    outs, tans = cg.ForwardMode(g, of=["out"], wrt=wrt).jvp(feeds, v)
    u = rng.normal(size=np.shape(outs["out"]))
    _, cots = cg.ReverseMode(g, of="out", wrt=wrt).vjp(feeds, {"out": u})
    lhs = float(np.sum(u * tans["out"]))
    rhs = sum(float(np.sum(cots[w] * v[w])) for w in wrt)
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_second_order_through_gradient_graph(case):
    """The Hessian of sum(w * op) by forward-over-reverse and reverse-over-reverse equals
    central differences of the first-order gradient."""
    spec, shapes, xs, _, feeds = setup(case, seed=3)
    g = build_graph(spec, shapes, scale=SCALE)
    out = g.outputs["out"]
    w = np.random.default_rng(4).normal(size=out.shape) if out.shape else 1.3
    g.output("s", cg.sum(out * w))
    for i in diff_args(spec, shapes)[:2]:
        a = f"a{i}"
        gg = cg.gradient_graph(g, of="s", wrt=[a])
        grad_ev = cg.Evaluator(gg, outputs=[f"grad/{a}"])

        def grad_at(*args):
            return grad_ev.run({f"a{k}": v for k, v in enumerate(args)})[f"grad/{a}"]

        numeric = numeric_jacobian(grad_at, xs, i, eps=1e-5)
        for mode in ("forward", "reverse"):
            H = cg.jacobian(gg, feeds, of=f"grad/{a}", wrt=a, mode=mode)
            np.testing.assert_allclose(H, numeric, rtol=1e-5, atol=1e-5, err_msg=f"{mode} over reverse")


TORCH_CASES = [c for c in CASES if c[0].torch is not None]


@pytest.mark.parametrize("case", TORCH_CASES, ids=[case_id(c) for c in TORCH_CASES])
def test_against_torch(case):
    torch = pytest.importorskip("torch")
    spec, shapes, xs, g, feeds = setup(case, seed=5)
    rng = np.random.default_rng(6)
    idx = diff_args(spec, shapes)
    wrt = [f"a{i}" for i in idx]
    tx = [torch.tensor(x) for x in xs]

    def f(*diff):
        args = list(tx)
        for k, i in enumerate(idx):
            args[i] = diff[k]
        return SCALE * spec.torch(*args)

    primals = tuple(tx[i] for i in idx)
    tangents = {w: rng.normal(size=feeds[w].shape) for w in wrt}
    t_out, t_tan = torch.func.jvp(f, primals, tuple(torch.tensor(tangents[w]) for w in wrt))
    outs, tans = cg.ForwardMode(g, of=["out"], wrt=wrt).jvp(feeds, tangents)
    np.testing.assert_allclose(outs["out"], t_out.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(tans["out"], t_tan.numpy(), rtol=1e-9, atol=1e-9)

    u = rng.normal(size=np.shape(outs["out"]))
    _, vjp_fn = torch.func.vjp(f, *primals)
    t_cots = vjp_fn(torch.tensor(u))
    _, cots = cg.ReverseMode(g, of="out", wrt=wrt).vjp(feeds, {"out": u})
    for w, tc in zip(wrt, t_cots):
        np.testing.assert_allclose(cots[w], tc.numpy(), rtol=1e-9, atol=1e-9, err_msg=w)


def test_missing_rule_is_an_error_naming_op_and_input():
    from cgraph.ops.registry import OPS

    g = cg.Graph()
    x = g.input("x", (3,))
    g.output("y", cg.sum(cg.exp(x)))
    saved = OPS["exp"]
    try:
        import dataclasses
        OPS["exp"] = dataclasses.replace(saved, vjp=(), jvp=())
        with pytest.raises(cg.DerivativeError, match=r"exp.*\(exp\): no VJP rule for input 0"):
            cg.ReverseMode(g, "y", ["x"]).grad({"x": np.ones(3)})
        with pytest.raises(cg.DerivativeError, match=r"no JVP rule for input 0"):
            cg.ForwardMode(g, ["y"], ["x"])
    finally:
        OPS["exp"] = saved


def test_no_path_gives_zero_and_bad_wrt_is_an_error():
    g = cg.Graph()
    x = g.input("x", (None, 2))
    g.input("z", (3,))
    lab = g.input("lab", (3,), "int64")
    g.output("y", cg.sum(x * 2.0))
    g.output("v", x * 2.0)
    _, gr = cg.ReverseMode(g, "y", ["x", "z"]).grad({"x": np.ones((4, 2)), "z": np.ones(3), "lab": [1, 2, 3]})
    np.testing.assert_array_equal(gr["z"], np.zeros(3))
    np.testing.assert_array_equal(gr["x"], np.full((4, 2), 2.0))
    with pytest.raises(cg.DerivativeError, match="lab"):
        cg.ReverseMode(g, "y", ["lab"])
    with pytest.raises(cg.DerivativeError, match="scalar"):
        cg.ReverseMode(g, "v", ["x"]).grad({"x": np.ones((4, 2))})
    with pytest.raises(cg.GraphError, match="no output 'nope'"):
        cg.ReverseMode(g, "nope", ["x"])
    assert lab.dtype == np.int64


def test_broadcast_gradients_with_run_time_sizes():
    """Gradients wrt a bias broadcast over a batch of run-time size sum over the batch."""
    g = cg.Graph()
    x = g.input("x", (None, 3))
    b = g.param("b", np.array([0.1, 0.2, 0.3]))
    g.output("loss", cg.mean(cg.tanh(x + b)))
    rm = cg.ReverseMode(g, "loss", ["b", "x"])
    for n in (2, 5):
        X = np.random.default_rng(n).normal(size=(n, 3))
        _, gr = rm.grad({"x": X})
        d = (1 - np.tanh(X + g.params["b"]) ** 2) / X.size
        np.testing.assert_allclose(gr["b"], d.sum(0), rtol=1e-12)
        np.testing.assert_allclose(gr["x"], d, rtol=1e-12)
    assert cg.gradcheck(g, {"x": X}, of="loss", wrt=["b"]) < 1e-8


def test_a_wrt_name_given_twice_is_refused_everywhere():
    g = cg.Graph()
    x = g.input("x", (3,))
    g.param("V", np.ones(3))
    g.output("l", cg.sum(x * g["V"]))
    for make in (lambda w: cg.ReverseMode(g, "l", w), lambda w: cg.ForwardMode(g, ["l"], w),
                 lambda w: cg.gradient_graph(g, "l", w), lambda w: cg.gradcheck(g, {"x": np.ones(3)}, "l", w)):
        with pytest.raises(cg.DerivativeError, match="wrt 'V' is given twice"):
            make(["V", "x", "V"])


def test_gradcheck_reports_a_kink():
    g = cg.Graph()
    x = g.input("x", (2,))
    g.output("y", cg.sum(cg.relu(x)))
    assert cg.gradcheck(g, {"x": np.array([0.0, 1.0])}, of="y", wrt="x") > 0.1
    assert cg.gradcheck(g, {"x": np.array([-1.0, 1.0])}, of="y", wrt="x") < 1e-8


def test_jacobian_auto_picks_fewer_sweeps():
    g = cg.Graph()
    x = g.input("x", (4,))
    W = g.param("W", np.arange(8.0).reshape(2, 4))
    g.output("y", cg.reshape(W @ cg.reshape(x, (4, 1)), (2,)))
    feeds = {"x": np.ones(4)}
    J = cg.jacobian(g, feeds, "y", "x", mode="auto")  # 2 outputs < 4 inputs: reverse, 2 sweeps
    np.testing.assert_allclose(J, g.params["W"])
    np.testing.assert_allclose(cg.jacobian(g, feeds, "y", "W", mode="forward"),
                               np.einsum("ij,k->ijk", np.eye(2), np.ones(4)))


def test_run_time_size_of_one_stretched_by_broadcasting():
    """x of shape (None, 4) fed with one row meets a (4, 4) param: numpy stretches the row,
    and the gradient sums back over the stretched axis (the run-time shape decides)."""
    g = cg.Graph()
    x = g.input("x", (None, 4))
    w = g.param("w", np.linspace(-1, 1, 16).reshape(4, 4))
    g.output("l", cg.sum(cg.tanh(x + w)))
    rm = cg.ReverseMode(g, "l", ["x", "w"])
    for n in (1, 4):
        X = np.random.default_rng(n).normal(size=(n, 4))
        _, gr = rm.grad({"x": X})
        d = 1 - np.tanh(X + g.params["w"]) ** 2
        np.testing.assert_allclose(gr["x"], d.sum(0, keepdims=True) if n == 1 else d, rtol=1e-12)
        np.testing.assert_allclose(gr["w"], d, rtol=1e-12)
        assert rm.stats.peak_bytes == rm.stats.predicted_peak_bytes

"""Convolution and pooling (cgraph/ops/conv.py) beyond the spec table: the declared scratch
bytes are what the kernels allocate (tracemalloc), so a plan's predicted peak is honest; ties in
max pooling share the derivative; "same" padding; shape errors; a small CNN's gradient against
torch, its second derivatives, and its reverse mode under a memory budget."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import cgraph as cg
from cgraph.schedule import Plan

# numpy's ufuncs keep iteration buffers of up to 8192 elements per operand (3 operands) beside
# what a kernel allocates itself: not data-sized, so not declared
NUMPY_BUFFERS = 3 * 8192 * 8 + 4096


def small_cnn(dtype="float64", n=4, seed=0):
    rng = np.random.default_rng(seed)
    g = cg.Graph("cnn")
    x = g.input("x", (None, 2, 9, 8), dtype)
    y = g.input("y", (None, 3), dtype)
    w1 = g.param("w1", rng.normal(0, 0.3, (4, 2, 3, 3)), dtype)
    b1 = g.param("b1", rng.normal(0, 0.1, (4, 1, 1)), dtype)
    w2 = g.param("w2", rng.normal(0, 0.3, (6, 2, 2, 2)), dtype)
    v = g.param("v", rng.normal(0, 0.3, (6 * 2 * 2, 3)), dtype)
    h = cg.relu(cg.conv2d(x, w1, padding="same") + b1)               # (N, 4, 9, 8)
    h = cg.max_pool2d(h, 2, padding=(1, 0))                          # (N, 4, 5, 4)
    h = cg.tanh(cg.conv2d(h, w2, stride=(2, 1), dilation=(1, 2), groups=2))  # (N, 6, 2, 2)
    h = cg.avg_pool2d(h, (1, 2), stride=1, padding=(0, 1), count_include_pad=False)  # (N, 6, 2, 3)
    h = cg.reshape(h[:, :, :, :2], (-1, 6 * 2 * 2))
    logits = h @ v
    g.output("loss", cg.softmax_cross_entropy(logits, y))
    g.output("logits", logits)
    feeds = {"x": rng.normal(size=(n, 2, 9, 8)).astype(dtype), "y": np.eye(3)[rng.integers(0, 3, n)].astype(dtype)}
    return g, feeds


def test_declared_scratch_is_what_the_kernels_allocate():
    """Every step with a scratch rule, in a CNN's gradient and forward-mode graphs, run under
    tracemalloc: the kernel's peak allocation is its output plus the declared scratch."""
    g, feeds = small_cnn(n=16)
    gg = cg.gradient_graph(g, "loss", ["x", *g.trainable])
    from cgraph.autodiff import jvp_graph

    jg = jvp_graph(g, ["loss"], ["x", "w1"])
    checked = set()
    for d, extra in ((gg, {}), (jg, {"tangent:x": feeds["x"], "tangent:w1": g.params["w1"]})):
        plan = Plan(d, [d.output_node(o) for o in d.outputs], passes=())
        values = {n: ({**feeds, **extra}[n] if k == "input" else d.value(n)) for n, k in zip(plan.leaves,
                                                                                           plan.leaf_kinds)}
        for step in plan.steps:
            ins = [values[a] for a in step.args]
            if step.scratch is None:
                values[step.name] = step.fn(*ins)
                continue
            tracemalloc.start()
            tracemalloc.reset_peak()
            out = step.fn(*ins)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            declared = out.nbytes + step.scratch(*ins)
            assert declared - 2048 <= peak <= declared + NUMPY_BUFFERS, (step.op, peak, declared)
            values[step.name] = out
            checked.add(step.op)
    assert checked >= {"conv2d", "conv2d_transpose", "conv2d_filter_grad", "max_pool2d_scatter",
                       "max_pool2d_gather", "avg_pool2d", "avg_pool2d_scatter"}


def test_scratch_is_counted_in_the_peak():
    g = cg.Graph()
    x = g.input("x", (None, 3, 16, 16))
    w = g.param("w", np.ones((8, 3, 3, 3)))
    g.output("y", cg.conv2d(x, w))
    ev = cg.Evaluator(g)
    ev.run({"x": np.ones((5, 3, 16, 16))})
    out, cols = 5 * 8 * 14 * 14 * 8, 5 * 3 * 9 * 14 * 14 * 8
    assert ev.stats.peak_bytes == ev.stats.predicted_peak_bytes == out + cols  # the products written into the output


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_small_cnn_gradient_against_torch_and_predicted_memory(dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    g, feeds = small_cnn(dtype)
    rm = cg.ReverseMode(g, "loss", ["x", *g.trainable])
    loss, grads = rm.grad(feeds)
    assert rm.stats.peak_bytes == rm.stats.predicted_peak_bytes
    t = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in {**feeds, **g.params}.items()}
    h = F.relu(F.conv2d(t["x"], t["w1"], padding="same") + t["b1"])
    h = F.max_pool2d(h, 2, padding=(1, 0))
    h = torch.tanh(F.conv2d(h, t["w2"], stride=(2, 1), dilation=(1, 2), groups=2))
    h = F.avg_pool2d(h, (1, 2), stride=1, padding=(0, 1), count_include_pad=False)
    logits = h[:, :, :, :2].reshape(-1, 24) @ t["v"]
    tl = F.cross_entropy(logits, t["y"])
    want = torch.autograd.grad(tl, [t[k] for k in ["x", *g.trainable]])
    tol = 1e-10 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(loss, tl.item(), rtol=tol)
    for k, wt in zip(["x", *g.trainable], want, strict=True):
        np.testing.assert_allclose(grads[k], wt.numpy(), rtol=tol, atol=tol, err_msg=k)


def test_second_order_hessian_vector_product_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    X, W = rng.normal(size=(2, 3, 6, 5)), rng.normal(size=(4, 3, 3, 2))
    g = cg.Graph()
    x, w = g.input("x", X.shape), g.param("w", W)
    h = cg.max_pool2d(cg.softplus(cg.conv2d(x, w, stride=(1, 2), padding=(1, 1))), (2, 2), stride=1)
    g.output("loss", cg.sum(h * h * h))
    gg = cg.gradient_graph(g, "loss", ["x", "w"])
    V = {"x": rng.normal(size=X.shape), "w": rng.normal(size=W.shape)}
    _, hv = cg.ForwardMode(gg, ["grad/x", "grad/w"], ["x", "w"]).jvp({"x": X}, V)

    def f(x, w):
        return (F.max_pool2d(F.softplus(F.conv2d(x, w, stride=(1, 2), padding=1)), 2, stride=1) ** 3).sum()

    args = (torch.tensor(X), torch.tensor(W))
    _, want = torch.func.jvp(torch.func.grad(f, argnums=(0, 1)), args, (torch.tensor(V["x"]), torch.tensor(V["w"])))
    np.testing.assert_allclose(hv["grad/x"], want[0].numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(hv["grad/w"], want[1].numpy(), rtol=1e-9, atol=1e-9)


def test_max_pool_ties_share_the_derivative():
    g = cg.Graph()
    x = g.input("x", (1, 1, 2, 4))
    g.output("s", cg.sum(cg.max_pool2d(x, 2)))
    X = np.array([[[[1.0, 3.0, 5.0, 5.0], [3.0, 2.0, 5.0, 5.0]]]])
    _, gr = cg.ReverseMode(g, "s", ["x"]).grad({"x": X})
    np.testing.assert_array_equal(gr["x"], [[[[0, 0.5, 0.25, 0.25], [0.5, 0, 0.25, 0.25]]]])
    _, tan = cg.ForwardMode(g, ["s"], ["x"]).jvp({"x": X}, {"x": np.arange(8.0).reshape(X.shape)})
    assert tan["s"] == pytest.approx((1 + 4) / 2 + (2 + 3 + 6 + 7) / 4)


def test_padding_same_keeps_the_size_and_shape_errors_name_the_node():
    g = cg.Graph()
    x = g.input("x", (None, 3, 7, 6))
    for k, d in (((3, 3), (1, 1)), ((2, 4), (2, 1)), ((1, 1), (1, 1))):
        w = g.param(f"w{k}{d}", np.zeros((2, 3, *k)))
        assert cg.conv2d(x, w, padding="same", dilation=d).shape == (None, 2, 7, 6)
    w = g.param("w", np.zeros((4, 3, 3, 3)))
    with pytest.raises(cg.ShapeError, match="padding='same' needs stride 1"):
        cg.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(cg.ShapeError, match=r"conv2d\S* \(conv2d\): input channels and kernel channels \* groups"):
        cg.conv2d(x, g.param("w6", np.zeros((4, 6, 3, 3))))
    with pytest.raises(cg.ShapeError, match="do not split into 3 groups"):
        cg.conv2d(x, g.param("wg", np.zeros((4, 1, 3, 3))), groups=3)
    with pytest.raises(cg.ShapeError, match="does not fit"):
        cg.conv2d(x, g.param("wbig", np.zeros((4, 3, 9, 3))))
    with pytest.raises(cg.ShapeError, match="more than half the kernel"):
        cg.max_pool2d(x, 2, padding=2)
    with pytest.raises(cg.ShapeError, match="must be 4-D"):
        cg.avg_pool2d(g.input("v", (3, 4)), 2)
    with pytest.raises(cg.GraphError, match="attribute 'stride' must be at least 1"):
        cg.conv2d(x, w, stride=0)


def test_derivative_wrt_the_image_needs_its_size_known():
    g = cg.Graph()
    x = g.input("x", (None, 1, None, None))
    g.output("s", cg.sum(cg.conv2d(x, g.param("w", np.ones((1, 1, 2, 2))))))
    _, grads = cg.ReverseMode(g, "s", ["w"]).grad({"x": np.ones((2, 1, 4, 5))})
    np.testing.assert_array_equal(grads["w"], np.full((1, 1, 2, 2), 2 * 3 * 4.0))
    with pytest.raises(cg.DerivativeError, match="needs the image's height and width known"):
        cg.ReverseMode(g, "s", ["x"]).grad({"x": np.ones((2, 1, 4, 5))})


def test_deep_cnn_under_a_memory_budget():
    """A chain of convolutions stores an activation per layer; under a budget some are
    recomputed, and the peak, im2col buffers included, is the one predicted."""
    rng = np.random.default_rng(0)
    g = cg.Graph("deep")
    h = x = g.input("x", (None, 2, 8, 8))
    for i in range(10):
        h = cg.tanh(cg.conv2d(h, g.param(f"w{i}", rng.normal(0, 0.4, (2, 2, 3, 3))), padding=1))
    g.output("loss", cg.sum(h * h))
    feeds = {"x": rng.normal(size=(32, 2, 8, 8))}
    free = cg.ReverseMode(g, "loss", g.trainable)
    _, want = free.grad(feeds)
    with pytest.raises(cg.MemoryBudgetError) as e:
        cg.ReverseMode(g, "loss", g.trainable, memory_budget=1000).grad(feeds)
    assert e.value.smallest < 0.8 * free.stats.peak_bytes
    budget = (e.value.smallest + free.stats.peak_bytes) // 2
    rm = cg.ReverseMode(g, "loss", g.trainable, memory_budget=budget)
    _, got = rm.grad(feeds)
    assert rm.stats.peak_bytes == rm.memory_plan.predicted_peak <= budget
    assert rm.memory_plan.recomputed and x.name not in rm.memory_plan.recomputed
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)

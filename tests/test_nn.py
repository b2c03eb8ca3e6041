"""cg.nn.mlp: structure, initialisation, forward values and gradients against numpy references
(the lecture's hand-written Iris gradients among them), skip connections and batch norm."""

import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import cgraph as cg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from lecture_iris import gradients, lecture_data  # noqa: E402

ACT = {"logistic": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}


def np_logits(g, x, hidden="logistic", skip=False, mode=None, eps=1e-5):
    """The MLP by hand from g's params. mode: None (no batch norm), "train" or "eval"."""
    p = g.params
    n_layers = len([k for k in p if k.endswith("/W")])
    h = x
    for i in range(n_layers):
        a = h @ p[f"layer{i}/W"]
        if f"layer{i}/b" in p:
            a = a + p[f"layer{i}/b"]
        if i == n_layers - 1:
            return a
        if mode is not None:
            if mode == "train":
                mu, var = a.mean(0), a.var(0)
            else:
                mu, var = p[f"layer{i}/bn/running_mean"], p[f"layer{i}/bn/running_var"]
            a = p[f"layer{i}/bn/gamma"] * (a - mu) / np.sqrt(var + eps) + p[f"layer{i}/bn/beta"]
        out = ACT[hidden](a)
        if skip and i > 0 and out.shape == h.shape:
            out = out + h
        h = out


def test_structure_and_names():
    g = cg.nn.mlp([4, 5, 3], seed=1)
    assert set(g.inputs) == {"x", "y"}
    assert list(g.outputs) == ["loss", "logits"]
    assert {k: v.shape for k, v in g.params.items()} == {
        "layer0/W": (4, 5), "layer0/b": (5,), "layer1/W": (5, 3), "layer1/b": (3,)}
    assert g.trainable == list(g.params)
    assert not np.any(g.params["layer0/b"]) and not np.any(g.params["layer1/b"])
    assert json.loads(g.metadata["nn.mlp"])["sizes"] == [4, 5, 3]
    assert list(cg.nn.mlp([4, 5, 3], bias=False).params) == ["layer0/W", "layer1/W"]


def test_init_is_seeded_and_scaled():
    a, b, c = cg.nn.mlp([3, 16, 3], seed=0), cg.nn.mlp([3, 16, 3], seed=0), cg.nn.mlp([3, 16, 3], seed=1)
    assert np.array_equal(a.params["layer0/W"], b.params["layer0/W"])
    assert not np.array_equal(a.params["layer0/W"], c.params["layer0/W"])
    # "normal" is the lecture's randn * scale, drawn layer by layer from default_rng(seed)
    rng = np.random.default_rng(0)
    assert np.array_equal(a.params["layer0/W"], rng.standard_normal((3, 16)) * 0.01)
    assert np.array_equal(a.params["layer1/W"], rng.standard_normal((16, 3)) * 0.01)
    big = 400
    glorot = cg.nn.mlp([big, big, 2], init="glorot").params["layer0/W"]
    he = cg.nn.mlp([big, big, 2], init="he").params["layer0/W"]
    assert glorot.std() == pytest.approx(np.sqrt(2 / (2 * big)), rel=0.02)
    assert he.std() == pytest.approx(np.sqrt(2 / big), rel=0.02)


@pytest.mark.parametrize("bad, match", [
    (dict(sizes=[3]), "sizes"), (dict(sizes=[3, 0, 2]), "sizes"), (dict(hidden="gelu"), "hidden='gelu'"),
    (dict(loss="hinge"), "loss='hinge'"), (dict(init="xavier"), "init='xavier'"), (dict(bn_momentum=0.0), "momentum"),
])
def test_bad_arguments_are_one_line_errors(bad, match):
    kwargs = {"sizes": [3, 4, 2], **bad}
    with pytest.raises(cg.GraphError, match=match):
        cg.nn.mlp(**kwargs)


def test_iris_gradients_equal_the_lecture():
    """The lecture's model built as a graph: its reverse-mode gradients are the hand-written ones."""
    X, Y, _ = lecture_data()
    g = cg.nn.mlp([3, 16, 3], hidden="logistic", loss="softmax_cross_entropy", bias=False, seed=3)
    rng = np.random.default_rng(7)  # away from the tiny initial weights, where everything is ~0
    g.set_param("layer0/W", rng.normal(size=(3, 16)))
    g.set_param("layer1/W", rng.normal(size=(16, 3)))
    _, grads = cg.ReverseMode(g, of="loss", wrt=g.trainable).grad({"x": X, "y": Y})
    dW, dV = gradients(X, Y, g.params["layer1/W"], g.params["layer0/W"])
    assert np.max(np.abs(dW)) > 1e-3 and np.max(np.abs(dV)) > 1e-3
    np.testing.assert_allclose(grads["layer1/W"], dW, rtol=0, atol=1e-10)
    np.testing.assert_allclose(grads["layer0/W"], dV, rtol=0, atol=1e-10)


@pytest.mark.parametrize("hidden", ["logistic", "tanh", "relu"])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy", "mse"])
def test_forward_and_loss_match_numpy(hidden, loss):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 4)), rng.uniform(size=(9, 3))
    if loss == "softmax_cross_entropy":
        y = np.eye(3)[rng.integers(0, 3, 9)]
    g = cg.nn.mlp([4, 6, 5, 3], hidden=hidden, loss=loss, init="glorot", seed=2)
    g.set_param("layer1/b", rng.normal(size=5))
    out = cg.Evaluator(g).run({"x": x, "y": y})
    u = np_logits(g, x, hidden)
    np.testing.assert_allclose(out["logits"], u, rtol=1e-13, atol=1e-15)
    want = {
        "softmax_cross_entropy": lambda: np.mean(np.log(np.exp(u).sum(1)) - np.sum(y * u, 1)),
        "binary_cross_entropy": lambda: np.mean(np.sum(y * np.log1p(np.exp(-u)) + (1 - y) * np.log1p(np.exp(u)), 1)),
        "mse": lambda: np.mean(0.5 * np.sum((u - y) ** 2, 1)),
    }[loss]()
    assert float(out["loss"]) == pytest.approx(want, rel=1e-12)


def test_skip_connections_between_equal_widths():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3))
    g = cg.nn.mlp([3, 5, 5, 5, 2], hidden="relu", init="he", skip=True, seed=4)
    plain = cg.nn.mlp([3, 5, 5, 5, 2], hidden="relu", init="he", skip=False, seed=4)
    got = cg.predict(g, x)
    np.testing.assert_allclose(got, np_logits(g, x, "relu", skip=True), rtol=1e-13)
    assert not np.allclose(got, cg.predict(plain, x))  # the skips change the function
    # layer0 (3 -> 5) has no skip: widths differ; layers 1 and 2 (5 -> 5) have one each
    def adds(m):
        return sum(n.op == "add" for n in m.nodes.values())
    assert adds(g) - adds(plain) == 2
    assert cg.gradcheck(g, {"x": x, "y": np.eye(2)[[0, 1, 0, 1, 1, 0, 0]]}, of="loss", wrt=g.trainable) < 1e-6


def test_batch_norm_training_and_inference_paths():
    rng = np.random.default_rng(2)
    x, y = rng.normal(2.0, 3.0, size=(32, 3)), np.eye(2)[rng.integers(0, 2, 32)]
    g = cg.nn.mlp([3, 6, 6, 2], hidden="relu", init="he", batch_norm=True, skip=True, seed=5)
    assert {"loss", "logits", "loss_eval", "logits_eval"} <= set(g.outputs)
    assert "layer0/b" not in g.params and "layer2/b" in g.params  # beta replaces the hidden biases
    assert "layer0/bn/running_mean" in g.params and "layer0/bn/running_mean" not in g.trainable
    g.set_param("layer1/bn/gamma", rng.uniform(0.5, 2.0, 6))
    g.set_param("layer1/bn/beta", rng.normal(size=6))
    out = cg.Evaluator(g).run({"x": x, "y": y})
    train = np_logits(g, x, "relu", skip=True, mode="train")
    evals = np_logits(g, x, "relu", skip=True, mode="eval")
    np.testing.assert_allclose(out["logits"], train, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["logits_eval"], evals, rtol=1e-12, atol=1e-14)
    assert not np.allclose(out["logits"], out["logits_eval"])  # batch vs running statistics
    # training mode depends on the other rows of the batch; inference mode does not
    assert not np.allclose(cg.predict(g, x[:4], output="logits"), out["logits"][:4])
    np.testing.assert_allclose(cg.predict(g, x[:4]), out["logits_eval"][:4], rtol=1e-13)
    # the exposed batch statistics are those the training path normalises layer 0 with
    a0 = x @ g.params["layer0/W"]
    np.testing.assert_allclose(out["layer0/bn/batch_mean"], a0.mean(0), rtol=1e-12)
    np.testing.assert_allclose(out["layer0/bn/batch_var"], a0.var(0), rtol=1e-12)
    # with the running statistics set to the batch's, inference equals training for that batch
    g.set_param("layer0/bn/running_mean", a0.mean(0))
    g.set_param("layer0/bn/running_var", a0.var(0))
    h = np.maximum(g.params["layer0/bn/gamma"] * (a0 - a0.mean(0)) / np.sqrt(a0.var(0) + 1e-5)
                   + g.params["layer0/bn/beta"], 0)
    a1 = h @ g.params["layer1/W"]
    g.set_param("layer1/bn/running_mean", a1.mean(0))
    g.set_param("layer1/bn/running_var", a1.var(0))
    np.testing.assert_allclose(cg.predict(g, x), out["logits"], rtol=1e-11, atol=1e-13)
    assert cg.gradcheck(g, {"x": x, "y": y}, of="loss", wrt=g.trainable) < 1e-6


def test_batch_norm_agrees_with_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 2.0, size=(16, 4))
    g = cg.nn.mlp([4, 5, 3], hidden="tanh", init="glorot", batch_norm=True, seed=6)
    g.set_param("layer0/bn/gamma", rng.uniform(0.5, 2.0, 5))
    g.set_param("layer0/bn/beta", rng.normal(size=5))
    lin = torch.nn.Linear(4, 5, bias=False, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(5, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(g.params["layer0/W"].T))
        bn.weight.copy_(torch.tensor(g.params["layer0/bn/gamma"]))
        bn.bias.copy_(torch.tensor(g.params["layer0/bn/beta"]))
    out = torch.tanh(bn(lin(torch.tensor(x)))).detach().numpy() @ g.params["layer1/W"] + g.params["layer1/b"]
    np.testing.assert_allclose(cg.predict(g, x, output="logits"), out, rtol=1e-12, atol=1e-14)


def test_float32_end_to_end():
    g = cg.nn.mlp([3, 8, 2], hidden="tanh", dtype="float32", batch_norm=True)
    assert all(v.dtype == np.float32 for v in g.params.values())
    x = np.random.default_rng(0).normal(size=(10, 3))
    out = cg.Evaluator(g).run({"x": x, "y": np.eye(2)[[0, 1] * 5]})
    assert out["logits"].dtype == np.float32 and out["loss"].dtype == np.float32


# ---- layers ------------------------------------------------------------------------------------

def test_layers_name_their_params_and_draw_them_seeded():
    g = cg.Graph("layers")
    x = g.input("x", (None, 3, 8, 8))
    h = cg.nn.conv2d(x, 6, 3, padding=1)
    h = cg.nn.conv2d(cg.relu(h), 4, (3, 1), groups=2, bias=False)
    with g.scope("head"):
        out = cg.nn.dense(cg.nn.flatten(cg.nn.max_pool2d(h, 2)), 5)
        out2 = cg.nn.dense(out, 2, init="normal", scale=0.5)
    assert {k: v.shape for k, v in g.params.items()} == {
        "conv0/W": (6, 3, 3, 3), "conv0/b": (6, 1, 1), "conv1/W": (4, 3, 3, 1),
        "head/dense0/W": (4 * 3 * 4, 5), "head/dense0/b": (5,), "head/dense1/W": (5, 2), "head/dense1/b": (2,)}
    assert out2.shape == (None, 2)
    rng = np.random.default_rng([0, zlib.crc32(b"conv0")])
    assert np.array_equal(g.params["conv0/W"], cg.nn.init_weight(rng, 27, 54, "he", 0.01, (6, 3, 3, 3)))
    big = cg.Graph()
    t = cg.nn.conv2d(big.input("x", (None, 64, 5, 5)), 128, 3, seed=1, name="c")
    assert t.shape == (None, 128, 3, 3)
    assert big.params["c/W"].std() == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.02)  # He: fan_in = C kh kw
    with pytest.raises(cg.GraphError, match="init='zeros' is not one of"):
        cg.nn.dense(out, 2, init="zeros")
    with pytest.raises(cg.ShapeError, match="flatten"):
        cg.nn.flatten(g.input("v", (None, None)))


def test_conv_layer_and_embedding_against_torch():
    torch = pytest.importorskip("torch")
    g = cg.Graph()
    x = g.input("x", (None, 2, 6, 6))
    ids = g.input("ids", (None, 3), "int64")
    g.output("y", cg.nn.conv2d(x, 4, 3, stride=2, padding=(1, 0), seed=3))
    g.output("e", cg.nn.embedding(ids, 7, 2, seed=3))
    X, ids_value = np.random.default_rng(0).normal(size=(5, 2, 6, 6)), np.array([[0, 6, 2]] * 5)
    out = cg.Evaluator(g).run({"x": X, "ids": ids_value})
    p = {k: torch.tensor(v) for k, v in g.params.items()}
    want = torch.nn.functional.conv2d(torch.tensor(X), p["conv0/W"], p["conv0/b"].reshape(-1), stride=2,
                                      padding=(1, 0))
    np.testing.assert_allclose(out["y"], want.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(out["e"], g.params["embedding0/table"][ids_value])


def test_dropout_layers_train_with_fit_and_a_fresh_mask_each_step(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4))
    Y = np.eye(2)[(X[:, 0] + X[:, 1] > 0).astype(int)]
    g = cg.Graph("drop")
    x, y = g.input("x", (None, 4)), g.input("y", (None, 2))
    h = cg.nn.dropout(cg.tanh(cg.nn.dense(x, 16)), 0.3)
    logits = cg.nn.dense(cg.nn.dropout(h, 0.2), 2)
    g.output("loss", cg.softmax_cross_entropy(logits, y))
    assert cg.nn.dropout(h, 0.5, training=False) is h
    assert g.metadata["nn.seed"] == "seed" and g.inputs["seed"].dtype == np.int64
    drops = [n for n in g.nodes.values() if n.op == "dropout"]
    assert len(drops) == 2 and drops[0].inputs[1] == "seed" and drops[1].inputs[1] != "seed"  # seed, seed + 1
    seen = []
    call = cg.optim.TrainStep.__call__
    monkeypatch.setattr(cg.optim.TrainStep, "__call__", lambda self, feeds, grads=None:
                        seen.append(int(feeds["seed"])) or call(self, feeds, grads))
    hist = cg.fit(g, {"x": X, "y": Y}, optimizer=cg.optim.Adam(lr=0.05), epochs=30, batch_size=32, progress=False)
    assert len(set(seen)) == len(seen) == 60, "a fresh seed each step"
    assert hist.loss[-1] < 0.6 * hist.loss[0]

"""cg.fit and cg.predict: the lecture's training run reproduced step for step, minibatches,
stopping rules, metrics, the progress bar, batch norm's running statistics, and resuming."""

import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import cgraph as cg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from lecture_iris import GD, lecture_data  # noqa: E402

X, Y, LABELS = lecture_data()
DATA = {"x": X, "y": Y}


def lecture_model(seed=0):
    return cg.nn.mlp([3, 16, 3], hidden="logistic", loss="softmax_cross_entropy", bias=False, seed=seed)


def test_2000_gd_steps_follow_the_lecture_loop():
    g = lecture_model()
    V0, W0 = g.params["layer0/W"].copy(), g.params["layer1/W"].copy()
    h = cg.fit(g, DATA, cg.optim.GD(lr=0.1), epochs=2000, progress=False)
    W, V, _, losses = GD(X, Y, W0, V0, lr=0.1, max_iters=2000, record=True)
    assert h.steps == h.epochs == len(h.loss) == len(losses) == 2000 and not h.stopped
    np.testing.assert_allclose(h.loss, losses, rtol=0, atol=1e-8)
    np.testing.assert_allclose(g.params["layer1/W"], W, rtol=0, atol=1e-8)
    np.testing.assert_allclose(g.params["layer0/W"], V, rtol=0, atol=1e-8)
    assert losses[-1] < 0.15 < losses[0]
    assert cg.train.accuracy(g, X, Y) >= 0.9


def test_stop_rules():
    g = lecture_model()
    h = cg.fit(g, DATA, cg.optim.GD(lr=0.1), epochs=5000, progress=False,
               stop=lambda e: np.linalg.norm(e.grads["layer1/W"]) < 0.05)  # the lecture's ||dW|| < eps
    assert h.stopped and h.epochs < 5000
    # the lecture's loop stops at the same step
    g2 = lecture_model()
    _, _, t, losses = GD(X, Y, g2.params["layer1/W"], g2.params["layer0/W"], eps=0.05, record=True)
    assert t == len(losses) == h.steps
    h2 = cg.fit(lecture_model(), DATA, cg.optim.GD(lr=0.1), epochs=5000, progress=False, eps=0.05)
    assert h2.stopped and h2.steps < 5000


def test_minibatches_are_seeded_shuffles():
    """Each epoch uses the permutation default_rng([seed, epochs trained]) and the epoch's loss
    is the row-weighted mean of its batches' losses: checked against a hand-written loop."""
    opt = cg.optim.Momentum(lr=0.1, beta=0.9)
    g = lecture_model()
    h = cg.fit(g, DATA, opt, epochs=3, batch_size=64, seed=5, progress=False)
    assert h.steps == 3 * 3  # 64 + 64 + 22 rows
    ref = lecture_model()
    rm = cg.ReverseMode(ref, of="loss", wrt=ref.trainable)
    losses = []
    for e in range(3):
        order = np.random.default_rng([5, e]).permutation(150)
        total = 0.0
        for i in range(0, 150, 64):
            idx = order[i:i + 64]
            value, grads = rm.grad({"x": X[idx], "y": Y[idx]})
            opt.step(ref, grads)
            total += float(value) * len(idx)
        losses.append(total / 150)
    assert h.loss == losses
    assert all(np.array_equal(g.params[k], ref.params[k]) for k in g.params)
    other = cg.fit(lecture_model(), DATA, cg.optim.Momentum(lr=0.1, beta=0.9), epochs=3, batch_size=64,
                   seed=6, progress=False)
    assert other.loss != h.loss


def test_metric_history():
    g = lecture_model()
    h = cg.fit(g, DATA, cg.optim.Adam(lr=0.05), epochs=40, metric="accuracy", progress=False)
    assert len(h.metric) == 40 and h.metric[-1] == cg.train.accuracy(g, X, Y) >= 0.9
    h2 = cg.fit(g, DATA, cg.optim.Adam(lr=0.05), epochs=2, metric=lambda m: float(m.params["layer1/W"].sum()),
                progress=False)
    assert h2.metric[-1] == float(g.params["layer1/W"].sum())


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    cg.fit(lecture_model(), DATA, cg.optim.GD(0.1), epochs=3)  # captured stderr: not a terminal
    assert capsys.readouterr().err == ""
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    cg.fit(lecture_model(), DATA, cg.optim.GD(0.1), epochs=3, progress=False)
    assert term.getvalue() == ""
    cg.fit(lecture_model(), DATA, cg.optim.GD(0.1), epochs=3)
    assert "3/3" in term.getvalue() and "loss=" in term.getvalue()


def test_predict_in_batches_and_errors():
    g = lecture_model()
    cg.fit(g, DATA, cg.optim.GD(0.1), epochs=50, progress=False)
    full = cg.predict(g, X)
    np.testing.assert_allclose(cg.predict(g, X, batch_size=7), full, rtol=1e-14, atol=1e-16)
    assert cg.predict(g, {"x": X, "y": Y}, output="loss").shape == ()
    with pytest.raises(cg.ShapeError, match="scalar"):
        cg.predict(g, {"x": X, "y": Y}, output="loss", batch_size=10)
    with pytest.raises(cg.FeedError, match="same number of rows"):
        cg.fit(g, {"x": X, "y": Y[:-1]}, cg.optim.GD(0.1), epochs=1, progress=False)
    with pytest.raises(TypeError, match="optimizer"):
        cg.fit(g, DATA, "sgd", epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        cg.fit(g, DATA, cg.optim.GD(0.1), epochs=1, batch_size=0)


def test_batch_norm_running_statistics_follow_the_batches():
    rng = np.random.default_rng(0)
    x, y = rng.normal(3.0, 2.0, size=(40, 2)), np.eye(2)[rng.integers(0, 2, 40)]
    g = cg.nn.mlp([2, 4, 2], hidden="relu", init="he", batch_norm=True, bn_momentum=0.25, seed=1)
    W0 = g.params["layer0/W"].copy()
    cg.fit(g, {"x": x, "y": y}, cg.optim.GD(lr=0.0001), epochs=1, progress=False)
    a = x @ W0  # the statistics are those of the forward pass before the step
    np.testing.assert_allclose(g.params["layer0/bn/running_mean"], 0.25 * a.mean(0), rtol=1e-13)
    np.testing.assert_allclose(g.params["layer0/bn/running_var"], 0.75 + 0.25 * a.var(0), rtol=1e-13)
    # many small batches: the running statistics approach the training set's
    cg.fit(g, {"x": x, "y": y}, cg.optim.GD(lr=1e-9), epochs=30, batch_size=20, progress=False)
    a = x @ g.params["layer0/W"]
    np.testing.assert_allclose(g.params["layer0/bn/running_mean"], a.mean(0), rtol=0.1)
    np.testing.assert_allclose(g.params["layer0/bn/running_var"], a.var(0), rtol=0.2)


def _reloaded_in_memory(g, seed=0):
    """What saving and loading keep: params (running statistics too), state and metadata."""
    c = cg.nn.mlp([2, 8, 8, 3], hidden="relu", init="he", skip=True, batch_norm=True, seed=seed + 99)
    for k, v in g.params.items():
        c.set_param(k, v)
    c.state.update({k: np.array(v) for k, v in g.state.items()})
    c.metadata.update(g.metadata)
    return c


def test_resume_equals_uninterrupted_training():
    data = {"x": X[:, :2], "y": Y}

    def model():
        return cg.nn.mlp([2, 8, 8, 3], hidden="relu", init="he", skip=True, batch_norm=True, seed=0)

    whole = model()
    h = cg.fit(whole, data, cg.optim.Adam(lr=0.01), epochs=6, batch_size=32, seed=3, progress=False)
    first = model()
    h1 = cg.fit(first, data, cg.optim.Adam(lr=0.01), epochs=2, batch_size=32, seed=3, progress=False)
    resumed = _reloaded_in_memory(first)
    h2 = cg.fit(resumed, data, cg.optim.from_graph(resumed), epochs=4, batch_size=32, seed=3, progress=False)
    assert h1.loss + h2.loss == h.loss
    for k in whole.params:
        assert np.array_equal(resumed.params[k], whole.params[k]), k
    assert int(resumed.state["fit/epoch"]) == 6 and int(resumed.state["optim/Adam/t"]) == 6 * 5


def test_api_md_train_section():
    """The public API's reference snippet, section 5, verbatim (X, Y: the lecture's Iris data)."""
    g = cg.nn.mlp([3, 16, 3], hidden="logistic", loss="softmax_cross_entropy", seed=0)
    history = cg.fit(g, {"x": X, "y": Y}, optimizer=cg.optim.GD(lr=0.1), epochs=1000,
                     batch_size=None, progress=True)
    assert g.params["layer0/W"].shape == (3, 16) and g.params["layer0/b"].shape == (16,)
    assert len(history.loss) == 1000 and history.loss[-1] < 0.3 * history.loss[0]
    for opt in (cg.optim.Momentum(lr=0.1, beta=0.9), cg.optim.Adam(lr=0.01)):
        assert cg.fit(g, {"x": X, "y": Y}, opt, epochs=2, progress=False).steps == 2



def _bn_model(seed=0):
    return cg.nn.mlp([2, 8, 8, 3], hidden="relu", init="he", skip=True, batch_norm=True, seed=seed)


def test_resume_from_a_saved_file_equals_uninterrupted_training(tmp_path):
    data = {"x": X[:, :2], "y": Y}
    whole = _bn_model()
    h = cg.fit(whole, data, cg.optim.Adam(lr=0.01), epochs=5, batch_size=32, seed=3, progress=False)
    first = _bn_model()
    h1 = cg.fit(first, data, cg.optim.Adam(lr=0.01), epochs=2, batch_size=32, seed=3, progress=False)
    cg.save(first, tmp_path / "half.pb")
    resumed = cg.load(tmp_path / "half.pb")
    for k in first.params:  # running statistics are params: saved too
        assert np.array_equal(resumed.params[k], first.params[k]), k
    h2 = cg.fit(resumed, data, cg.optim.from_graph(resumed), epochs=3, batch_size=32, seed=3, progress=False)
    assert h1.loss + h2.loss == h.loss
    for k in whole.params:
        assert np.array_equal(resumed.params[k], whole.params[k]), k


@pytest.mark.parametrize("make", [lecture_model, _bn_model], ids=["lecture", "skip-bn"])
def test_reloaded_in_a_fresh_process_predicts_bit_for_bit(tmp_path, make):
    import subprocess

    g = make()
    x = X if g.inputs["x"].shape[1] == 3 else X[:, :2]
    cg.fit(g, {"x": x, "y": Y}, cg.optim.Momentum(lr=0.05), epochs=20, batch_size=50, progress=False)
    cg.save(g, tmp_path / "model.pb")
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, cgraph as cg; d = sys.argv[1]; "
            "np.save(d + '/pred.npy', cg.predict(cg.load(d + '/model.pb'), np.load(d + '/x.npy')))")
    top = str(Path(__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=top,
                   env={**__import__("os").environ, "PYTHONPATH": top})
    assert np.array_equal(np.load(tmp_path / "pred.npy"), cg.predict(g, x))


def test_validation_is_recorded_per_epoch_and_read_as_keras_users_do():
    rng = np.random.default_rng(1)
    order = rng.permutation(len(X))
    train, held = order[:100], order[100:]
    g = lecture_model()
    h = cg.fit(g, {"x": X[train], "y": Y[train]}, cg.optim.Adam(lr=0.05), epochs=30, metric="accuracy",
               validation={"x": X[held], "y": Y[held]}, progress=False)
    assert len(h.val_loss) == len(h.val_metric) == len(h.loss) == 30
    final = float(cg.Evaluator(g, outputs=["loss"]).run({"x": X[held], "y": Y[held]})["loss"])
    assert h.val_loss[-1] == final and h.val_loss[-1] < h.val_loss[0]
    assert h.val_metric[-1] == cg.train.accuracy(g, X[held], Y[held])
    assert h.history == {"loss": h.loss, "val_loss": h.val_loss, "accuracy": h.metric, "val_accuracy": h.val_metric}
    # without validation or metric, only the loss; a named metric function keeps its name
    h2 = cg.fit(lecture_model(), DATA, cg.optim.GD(0.1), epochs=2, progress=False)
    assert list(h2.history) == ["loss"] and h2.history["loss"] == h2.loss

    def w_sum(m):
        return float(m.params["layer1/W"].sum())

    h3 = cg.fit(lecture_model(), DATA, cg.optim.GD(0.1), epochs=2, metric=w_sum, progress=False)
    assert list(h3.history) == ["loss", "w_sum"]
    with pytest.raises(cg.FeedError, match="validation 'x' and 'y'"):
        cg.fit(lecture_model(), DATA, cg.optim.GD(0.1), epochs=1, metric="accuracy", validation={"x": X},
               progress=False)


def test_validation_of_a_batch_norm_model_runs_in_inference_mode():
    g = cg.nn.mlp([3, 8, 3], hidden="relu", batch_norm=True, seed=0)
    h = cg.fit(g, DATA, cg.optim.Adam(0.01), epochs=3, batch_size=50, validation=DATA, progress=False)
    assert h.val_loss[-1] == float(cg.Evaluator(g, outputs=["loss_eval"]).run(DATA)["loss_eval"])


def test_progress_bar_shows_the_loss_and_shows_in_jupyter(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    h = cg.fit(lecture_model(), DATA, cg.optim.GD(0.1), epochs=3, validation=DATA)
    last = term.getvalue().split("\r")[-1]
    assert "3/3" in last and f"loss={h.loss[-1]:.4g}" in last and f"val_loss={h.val_loss[-1]:.4g}" in last
    notebook = io.StringIO()  # a Jupyter kernel's stderr is no terminal, but shows the bar
    monkeypatch.setattr(sys, "stderr", notebook)
    cg.fit(lecture_model(), DATA, cg.optim.GD(0.1), epochs=2)
    assert notebook.getvalue() == ""  # a log file
    kernel = types.SimpleNamespace(get_ipython=lambda: types.SimpleNamespace(kernel=object()))
    monkeypatch.setitem(sys.modules, "IPython", kernel)  # as IPython answers inside a Jupyter kernel
    cg.fit(lecture_model(), DATA, cg.optim.GD(0.1), epochs=2)
    assert "2/2" in notebook.getvalue()

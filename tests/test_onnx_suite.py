"""ONNX's own backend test suite (onnx.backend.test: node tests, the simple, pytorch-converted
and pytorch-operator models, the light real models) run against cgraph through the backend
adapter in onnx_backend.py. Every test passes, or is refused at import with the OnnxError line
that tests/onnx_refused.txt lists for it: a wrong value or a crash fails, and so does a test
that newly passes or is refused for another reason than the list's (`python tools/onnx_suite
--write` rewrites the list; `python tools/onnx_suite` prints the counts per category)."""

import warnings

import numpy as np
import onnx
import pytest
from onnx_backend import outcome, read_refused, retyped, suite

import cgraph as cg

with warnings.catch_warnings():  # the node tests' generators overflow on purpose
    warnings.simplefilter("ignore")
    TESTS = suite()
REFUSED = read_refused()


def test_the_list_names_only_tests_of_the_suite():
    assert set(REFUSED) <= set(TESTS), sorted(set(REFUSED) - set(TESTS))[:10]


@pytest.mark.parametrize("name", sorted(TESTS))
def test_onnx_backend(name):
    category, run = TESTS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf and nan are part of the tests' data
        kind, why = outcome(run)
    if kind == "skip":
        pytest.skip(why)
    assert kind != "wrong", f"{category} test {name}: {why}"
    if name in REFUSED:
        assert kind == "refused", f"{category} test {name} now passes: remove it from tests/onnx_refused.txt"
        assert why == REFUSED[name], f"{category} test {name} is refused for another reason: {why}"
    else:
        assert kind == "pass", f"{category} test {name} is refused: {why}"


# Node tests of operators imported as compositions of cgraph ops (or through their ONNX
# function), differentiated: their derivatives come from the ops they are built from.
COMPOSED = ["test_layer_normalization_4d_axis1", "test_nllloss_NCd1_weight", "test_gather_elements_0", "test_mvn",
            "test_shrink_soft", "test_elu", "test_lrn", "test_attention_3d", "test_sce_mean_weight", "test_hardswish",
            "test_split_equal_parts_2d", "test_mod_mixed_sign_float64", "test_globalaveragepool",
            "test_conv_with_strides_padding", "test_prelu_broadcast", "test_rms_normalization_2d_axis1", "test_selu",
            "test_softsign", "test_gelu_tanh_1", "test_averagepool_2d_precomputed_pads", "test_depthtospace_example",
            "test_reduce_sum_square_do_not_keepdims_example", "test_unsqueeze_three_axes"]


@pytest.mark.parametrize("name", COMPOSED)
def test_composed_imports_differentiate(name):
    """In float64, the gradient of a weighted sum of the outputs wrt every float input matches
    central differences."""
    from onnx.backend.test.loader import load_model_tests
    (case,) = [c for c in load_model_tests(kind="node") if c.name == name]
    model = retyped(case.model, onnx.TensorProto.DOUBLE)
    inputs, _ = case.data_sets[0]
    feeds = {vi.name: np.asarray(onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v)
             for vi, v in zip(model.graph.input, inputs, strict=False)}
    feeds = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    g = cg.onnx.load(model)
    values = cg.Evaluator(g).run(feeds)
    rng = np.random.default_rng(0)
    total = None
    for name, t in list(g.outputs.items()):
        if t.dtype == np.float64:
            term = cg.sum(t * rng.normal(size=values[name].shape))
            total = term if total is None else total + term
    g.output("s", total)
    wrt = [k for k, v in feeds.items() if v.dtype == np.float64]
    assert cg.gradcheck(g, feeds, of="s", wrt=wrt) < 1e-6

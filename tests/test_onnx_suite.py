"""ONNX's own backend test suite (onnx.backend.test: node tests, the simple, pytorch-converted
and pytorch-operator models, the light real models) run against cgraph through the backend
adapter in onnx_backend.py. Every test passes, or is refused at import with the OnnxError line
that tests/onnx_refused.txt lists for it: a wrong value or a crash fails, and so does a test
that newly passes or is refused for another reason than the list's (`python tools/onnx_suite
--write` rewrites the list; `python tools/onnx_suite` prints the counts per category)."""

import warnings

import pytest
from onnx_backend import outcome, read_refused, suite

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

"""The graph builder: names, scopes, leaves, params, networkx view, and build-time errors."""

import networkx as nx
import numpy as np
import pytest

import cgraph as cg


def test_api_build_snippet_shapes_and_names():
    rng = np.random.default_rng(0)
    g = cg.Graph("iris-mlp")
    x = g.input("x", shape=(None, 3))
    y = g.input("y", shape=(None, 3))
    V = g.param("V", rng.normal(0, 0.01, (3, 16)))
    W = g.param("W", rng.normal(0, 0.01, (16, 3)))
    c = g.constant("half", 0.5)
    logits = cg.logistic(x @ V) @ W
    loss = cg.softmax_cross_entropy(logits, y)
    g.output("loss", loss)
    g.output("logits", logits)
    assert logits.shape == (None, 3) and loss.shape == () and c.dtype == np.float64
    assert set(g.params) == {"V", "W"} and list(g.outputs) == ["loss", "logits"]
    assert list(g.inputs) == ["x", "y"]
    assert g.trainable == ["V", "W"]


def test_scopes_and_unique_names():
    g = cg.Graph()
    x = g.input("x", (2,))
    with g.scope("layer0"):
        W = g.param("W", np.ones(2))
        a = x * W
        b = x * W
        with g.scope("inner"):
            c = cg.exp(a)
    assert W.name == "layer0/W" and a.name == "layer0/mul" and b.name == "layer0/mul_1"
    assert c.name == "layer0/inner/exp"
    with pytest.raises(cg.GraphError, match="already used"):
        with g.scope("layer0"):
            g.param("W", np.ones(2))


def test_params_are_read_only_views_and_set_param_checks():
    g = cg.Graph()
    v = np.ones((2, 3))
    g.param("V", v)
    v[0, 0] = 5  # the graph holds a copy
    assert g.params["V"][0, 0] == 1
    with pytest.raises(ValueError):
        g.params["V"][0, 0] = 2
    g.set_param("V", np.zeros((2, 3), np.float32))  # castable, stays float64
    assert g.params["V"].dtype == np.float64 and g.params["V"].sum() == 0
    with pytest.raises(cg.ShapeError, match=r"param 'V': new value has shape \(3, 2\), the param has \(2, 3\)"):
        g.set_param("V", np.zeros((3, 2)))
    with pytest.raises(cg.GraphError, match="not a param"):
        g.set_param("nope", 1.0)
    x = g.input("x", (2, 3))
    with pytest.raises(cg.GraphError, match="param 'V': the value must be an array or a number, not tensor 'x'"):
        g.set_param("V", x)
    with pytest.raises(cg.GraphError, match="param 'W': the value must be an array or a number, not tensor 'x'"):
        g.param("W", x)


def test_values_that_overflow_a_params_dtype_are_refused():
    g = cg.Graph()
    g.param("p", np.ones(2, np.float32))
    with pytest.raises(cg.ShapeError, match=r"param 'p': 1e\+40 overflows float32 \(whose largest value is "
                                            r"3.403e\+38\)"):
        g.set_param("p", np.array([1e40, 1.0]))
    with pytest.raises(cg.ShapeError, match=r"param 'q': -1e\+300 overflows float32"):
        g.param("q", [1.0, -1e300], dtype="float32")
    assert g.params["p"].tolist() == [1.0, 1.0]
    g.set_param("p", np.array([np.inf, 3e38]))  # inf stays inf; the largest float32s fit
    assert g.params["p"][0] == np.inf and g.params["p"][1] == np.float32(3e38)


def test_shape_errors_at_build_name_node_op_and_shapes():
    g = cg.Graph()
    a, b = g.input("a", (None, 3)), g.input("b", (4, 5))
    with pytest.raises(cg.ShapeError, match=r"^matmul \(matmul\): inner sizes 3 and 4 differ \[inputs: a \(None, 3\) "
                                            r"float64, b \(4, 5\) float64\]$"):
        a @ b
    with pytest.raises(cg.ShapeError, match=r"add \(add\): shapes \(None, 3\) and \(4, 5\) do not broadcast"):
        a + b
    with pytest.raises(cg.ShapeError, match="reshape"):
        cg.reshape(b, (3, 7))
    with pytest.raises(cg.ShapeError, match=r"cannot reshape a multiple of 3 elements into \(7,\)"):
        cg.reshape(a, (7,))  # no run-time size makes 3 * n equal 7
    assert cg.reshape(a, (6,)).shape == (6,) and cg.reshape(a, (-1,)).shape == (None,)
    with pytest.raises(cg.ShapeError, match="axis 2 is out of range"):
        cg.sum(b, axis=2)
    with pytest.raises(cg.ShapeError, match="only basic indexing"):
        b[[0, 1]]
    with pytest.raises(cg.ShapeError, match="index"):
        b[7]
    with pytest.raises(cg.ShapeError, match="condition must be bool"):
        cg.where(b, b, b)
    with pytest.raises(cg.ShapeError, match="needs float"):
        cg.exp(g.input("i", (2,), "int64"))
    with pytest.raises(cg.ShapeError, match="unsupported dtype"):
        g.input("c", (2,), "complex128")


def test_mixing_graphs_and_truth_values_are_errors():
    g1, g2 = cg.Graph("one"), cg.Graph("two")
    a, b = g1.input("a", (2,)), g2.input("b", (2,))
    with pytest.raises(cg.GraphError, match="graph 'two' and of graph 'one'"):
        a + b
    with pytest.raises(cg.CgraphError, match="no truth value"):
        if a > 0:
            pass


def test_to_networkx_keeps_every_edge_and_is_acyclic():
    g = cg.Graph("sq")
    x = g.input("x", (3,))
    g.output("y", x * x + 1.0)
    G = g.to_networkx()
    assert isinstance(G, nx.DiGraph) and nx.is_directed_acyclic_graph(G)
    assert G.number_of_edges("x", "mul") == 2  # mul(x, x) keeps both inputs
    assert G.nodes["mul"]["op"] == "mul" and G.nodes["x"]["shape"] == (3,)
    assert list(nx.topological_sort(G))[0] == "x"

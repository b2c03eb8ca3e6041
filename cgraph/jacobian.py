"""Whole Jacobians and Hessians in a few batched sweeps, their sparsity patterns, and gradient
checks, built on the executors.

A Jacobian column is a JVP along a basis vector and a row a VJP along one; instead of a
Python loop of sweeps, `Jacobian` batches the tangent (or cotangent) input of the derivative
graph (`cg.vmap`) and pushes the basis vectors through one plan, in chunks whose predicted peak
fits `memory_limit`. The values the directions share (the forward sweep) are computed once.

A static graph also knows which outputs can depend on which inputs: `jacobian_sparsity`
propagates a pattern through each op's pattern rule. With `sparse=True` the columns (forward
mode) or rows (reverse mode) that share no row (column) are coloured alike (networkx's greedy
colouring) and pushed together as one direction, the mode with fewer colours is taken, and
the entries are read back from the compressed result: a tridiagonal Jacobian of any size
costs three directions. A Hessian is the Jacobian of the gradient graph, by forward mode over
it (forward over reverse), dense or sparse alike; being symmetric, a sparse one may take a star
colouring instead, which can need far fewer colours (an arrowhead: two, not n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import networkx as nx
import numpy as np

from cgraph.autodiff import COTANGENT, TANGENT, Seed, check_wrt, jvp_graph, vjp_graph
from cgraph.batching import vmap
from cgraph.errors import BatchingError, DerivativeError, SparseMissingError
from cgraph.executors import Evaluator, ReverseMode
from cgraph.executors.base import Executor, leaf_value
from cgraph.graph import Graph
from cgraph.ops.registry import get_op
from cgraph.patterns import Pattern, dense
from cgraph.schedule import Plan, concrete_shapes
from cgraph.shapes import Shape

MEMORY_LIMIT = 256 * 2**20  # bytes: the default bound on a batched sweep's predicted peak
COLOUR_LIMIT = 2_000_000  # the most conflict-graph entries a colouring builds (else each is its own colour)
MODES = ("auto", "forward", "reverse")


class Jacobian(Executor):
    """d of / d wrt, prepared once for many feeds: `Jacobian(g, of="y", wrt="x")(feeds)`.

    Dense, the result has shape out.shape + wrt.shape; "forward" pushes one tangent per wrt
    element, "reverse" one cotangent per output element, "auto" the fewer (forward on a tie),
    all in one batched plan, chunked so that each chunk's predicted peak stays within
    `memory_limit` bytes. With `sparse=True` the result is a scipy.sparse CSR array of shape
    (out.size, wrt.size) computed from one direction per colour ("auto": the mode with fewer
    colours). After a call, `mode` is the mode used, `sweeps` the number of directions pushed
    (columns, rows or colours) and `chunks` the number of batched runs. Plans and colourings are
    made once for each set of feed shapes.
    """

    def __init__(self, graph: Graph, of: str, wrt: str, mode: str = "auto", sparse: bool = False,
                 memory_limit: int = MEMORY_LIMIT) -> None:
        super().__init__(graph)
        if mode not in MODES:
            raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', not {mode!r}")
        if not isinstance(of, str) or not isinstance(wrt, str):
            raise TypeError("a Jacobian is of one output wrt one input or param: of and wrt are names")
        graph.output_node(of)
        check_wrt(graph, [wrt])
        if not isinstance(memory_limit, int) or memory_limit <= 0:
            raise ValueError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
        self.of, self.wrt, self.asked, self.sparse, self.memory_limit = of, wrt, mode, bool(sparse), memory_limit
        self.function, self.function_of = self._function()
        self.symmetric = False  # the Jacobian is symmetric (a Hessian): a star colouring may need fewer colours
        needed = self.function.needed_by([self.function.output_node(self.function_of), wrt])
        self._inputs = [n for n in graph.inputs if n in needed]  # the feeds whose shapes matter
        self.mode: str | None = None
        self.sweeps = 0
        self.chunks = 0
        self._setups: dict[Any, _Setup] = {}
        self._sweepers: dict[str, _Sweeper] = {}

    def _function(self) -> tuple[Graph, str]:
        """The graph and output whose Jacobian is taken (the Hessian's is its gradient)."""
        return self.graph, self.of

    def __call__(self, feeds: Mapping[str, Any]) -> Any:
        return self.run(feeds)

    def run(self, feeds: Mapping[str, Any]) -> Any:
        """The Jacobian at these feeds."""
        setup = self._setup(feeds)
        sweeper = self._sweeper(setup.mode)
        self.mode, self.sweeps = setup.mode, setup.directions
        compressed = sweeper.run(self, feeds, setup)
        if not self.sparse:
            J = compressed if setup.mode == "reverse" else compressed.T
            return J.reshape(setup.out_shape + setup.wrt_shape)
        S = setup.pattern
        assert S is not None and setup.take is not None
        return scipy_sparse().csr_array((compressed[setup.take], S.indices, S.indptr), shape=(S.size, S.n))

    # ---- what is made once per feed shapes --------------------------------------------------

    def _setup(self, feeds: Mapping[str, Any]) -> _Setup:
        try:
            key = tuple(np.shape(feeds[n]) for n in self._inputs)
        except (KeyError, TypeError):
            key = None
        setup = self._setups.get(key)
        if setup is None:
            shapes = {n: leaf_value(self.graph, feeds, n).shape for n in self._inputs}
            setup = self._setups[tuple(shapes.values())] = self._make_setup(shapes)
        return setup

    def _make_setup(self, shapes: dict[str, tuple[int, ...]]) -> _Setup:
        fg, of = self.function, self.function_of
        target = fg.output_node(of)
        meta = concrete_shapes(fg, shapes, fg.needed_by([target, self.wrt]))
        out_shape, wrt_shape = _dims(meta[target].shape), _dims(meta[self.wrt].shape)
        m, n = _size(out_shape), _size(wrt_shape)
        dtype = np.result_type(meta[target].dtype, meta[self.wrt].dtype)
        if not self.sparse:
            mode = self.asked if self.asked != "auto" else ("forward" if n <= m else "reverse")
            return _Setup(mode, out_shape, wrt_shape, dtype, n if mode == "forward" else m, shapes)
        S = sparsity_pattern(fg, shapes, of, self.wrt)
        options = [self.asked] if self.asked != "auto" else ["forward", "reverse"]
        best: tuple[str, int, np.ndarray] | None = None
        for mode in options:
            # a colour per column needs at least as many colours as a row has entries (and the
            # other way round): a mode that cannot do better is not coloured
            at_least = _most_per_line(S, by_rows=mode == "reverse")
            if best is not None and at_least >= best[1]:
                continue
            count, colour = colour_pattern(S, by_rows=mode == "reverse")
            if best is None or count < best[1]:
                best = (mode, count, colour)
        assert best is not None
        mode, count, colour = best
        rows = S.rows()
        take = (colour[S.indices], rows) if mode == "forward" else (colour[rows], S.indices)
        if self.symmetric and mode == "forward":
            S, count, colour, take = _fewer_by_symmetry(S, count, colour, take)
        return _Setup(mode, out_shape, wrt_shape, dtype, count, shapes, S, colour, take)

    def _sweeper(self, mode: str) -> _Sweeper:
        sweeper = self._sweepers.get(mode)
        if sweeper is None:
            sweeper = self._sweepers[mode] = _Sweeper(self.function, self.function_of, self.wrt, mode)
        return sweeper


class Hessian(Jacobian):
    """d^2 of / d wrt^2 of a scalar output, for many feeds: the Jacobian of the gradient graph
    by forward mode over it (forward over reverse), its tangents batched as `Jacobian`'s.
    Dense, the result has shape wrt.shape + wrt.shape; with `sparse=True` it is a scipy.sparse
    CSR array of (wrt.size, wrt.size) from one tangent per colour: of the pattern's columns, or
    of a star colouring (`star_colour`) where that needs fewer, each entry then read from its
    row or from its column, whichever holds it alone in its colour."""

    def __init__(self, graph: Graph, of: str, wrt: str, sparse: bool = False,
                 memory_limit: int = MEMORY_LIMIT) -> None:
        super().__init__(graph, of, wrt, mode="forward", sparse=sparse, memory_limit=memory_limit)
        self.symmetric = True

    def _function(self) -> tuple[Graph, str]:
        check_wrt(self.graph, [self.wrt])
        d = vjp_graph(self.graph, [self.of], [self.wrt], seed=Seed.ONES)
        return d, list(d.outputs)[-1]


class _Setup:
    """What one set of feed shapes fixes: the mode, shapes, directions, pattern and colours."""

    def __init__(self, mode: str, out_shape: tuple[int, ...], wrt_shape: tuple[int, ...], dtype: np.dtype,
                 directions: int, shapes: dict[str, tuple[int, ...]], pattern: Pattern | None = None,
                 colour: np.ndarray | None = None, take: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.mode, self.out_shape, self.wrt_shape, self.dtype = mode, out_shape, wrt_shape, dtype
        self.directions, self.shapes, self.pattern, self.colour = directions, shapes, pattern, colour
        self.take = take  # where each entry of the pattern is in the compressed result
        self.chunk: int | None = None
        self.seed_shape = wrt_shape if mode == "forward" else out_shape  # the shape of one direction
        self._seeds: dict[int, np.ndarray] = {}

    def seeds(self, start: int, stop: int) -> np.ndarray:
        """Directions start..stop-1, each of the seed's shape: basis vectors, or (sparse) the
        sum of the basis vectors of each colour (kept, read-only, when they are few)."""
        seeds = self._seeds.get(start)
        if seeds is None:
            seeds = self._make_seeds(start, stop).reshape((stop - start, *self.seed_shape))
            seeds.flags.writeable = False
            if seeds.nbytes <= 2**20:
                self._seeds[start] = seeds
        return seeds

    def _make_seeds(self, start: int, stop: int) -> np.ndarray:
        seeds = np.zeros((stop - start, _size(self.seed_shape)), self.dtype)
        if self.colour is None:
            seeds[np.arange(stop - start), np.arange(start, stop)] = 1
        else:
            pick = (self.colour >= start) & (self.colour < stop)
            seeds[self.colour[pick] - start, np.flatnonzero(pick)] = 1
        return seeds


class _Sweeper:
    """One batched plan of forward (or reverse) mode: the derivative graph with its tangent (or
    cotangent) input batched. Ops without a batching rule need a static batch size: then one
    plan per chunk size."""

    def __init__(self, fg: Graph, of: str, wrt: str, mode: str) -> None:
        if mode == "forward":
            self.graph = jvp_graph(fg, [of], [wrt])
            self.seed, self.result = TANGENT + wrt, TANGENT + of
        else:
            self.graph = vjp_graph(fg, [of], [wrt], seed=Seed.INPUT)
            self.seed, self.result = COTANGENT + of, list(self.graph.outputs)[-1]
        self._plans: dict[int | None, Plan] = {}
        try:
            self._plans[None] = self._plan(None)
        except BatchingError:
            pass  # an op with no batching rule: plans for static sizes

    def _plan(self, size: int | None) -> Plan:
        plan = self._plans.get(size)
        if plan is None:
            vb = vmap(self.graph, {self.seed: 0}, size=size)
            plan = self._plans[size] = Plan(vb, [vb.output_node(self.result)])
        return plan

    def plan(self, size: int) -> Plan:
        return self._plans[None] if None in self._plans else self._plan(size)

    def run(self, jac: Jacobian, feeds: Mapping[str, Any], setup: _Setup) -> np.ndarray:
        """The compressed Jacobian: one row per direction, flattened."""
        total = setup.directions
        if setup.chunk is None:
            setup.chunk = self._chunk(setup, jac.memory_limit)
        rows = []
        for start in range(0, total, setup.chunk):
            stop = min(total, start + setup.chunk)
            plan = self.plan(stop - start)
            (out,) = jac._run(plan, jac._leaves(plan, feeds, {self.seed: setup.seeds(start, stop)}))
            rows.append(np.asarray(out).reshape(stop - start, -1))
        jac.chunks = len(rows)
        if not rows:
            other = _size(setup.out_shape if setup.mode == "forward" else setup.wrt_shape)
            return np.zeros((0, other), setup.dtype)
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def _chunk(self, setup: _Setup, limit: int) -> int:
        """The most directions per run whose predicted peak (with the seeds) fits `limit`."""
        total = setup.directions
        if total <= 1:
            return max(total, 1)
        seed_bytes = _size(setup.seed_shape) * np.dtype(setup.dtype).itemsize

        def peak(c: int) -> int:
            shape = (c, *setup.seed_shape)
            return self.plan(c).predict_peak({**setup.shapes, self.seed: shape}) + c * seed_bytes

        p1, p2 = peak(1), peak(2)
        per = max(p2 - p1, 1)
        c = int(min(total, max(1, (limit - (p1 - per)) // per)))
        while c > 1 and peak(c) > limit:
            c //= 2
        return c


def _dims(shape: Shape) -> tuple[int, ...]:
    """A shape of concrete sizes (shape inference for given leaf shapes leaves no None)."""
    assert None not in shape, shape
    return cast(tuple[int, ...], tuple(shape))


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


# ---- sparsity ---------------------------------------------------------------------------

def sparsity_pattern(g: Graph, shapes: Mapping[str, tuple[int, ...]], of: str, wrt: str) -> Pattern:
    """The pattern of d of / d wrt for inputs of these shapes: each op's pattern rule applied
    node by node from the wrt leaf (the op's declared rule; DENSE where it has none)."""
    target = g.output_node(of)
    needed = g.needed_by([target])
    meta = concrete_shapes(g, shapes, needed | {wrt})
    n = _size(_dims(meta[wrt].shape))
    pats: dict[str, Pattern] = {}
    if wrt in needed:
        pats[wrt] = Pattern.identity(_dims(meta[wrt].shape))
    for node in g.nodes.values():
        if node.name not in needed or node.is_leaf or node.dtype.kind in "biu":  # ints and bools: no derivative
            continue
        opdef = get_op(node.op)
        live = [s in pats and opdef.carries(i) for i, s in enumerate(node.inputs)]
        if not any(live):
            continue
        xs = [pats[s] if on else Pattern.empty(_dims(meta[s].shape), n)
              for s, on in zip(node.inputs, live, strict=True)]
        out = _dims(meta[node.name].shape)
        p = (opdef.pattern or dense)(out, *xs, **node.attrs)
        if p.shape != out or p.n != n:
            raise DerivativeError(f"{node.name} ({node.op}): the pattern rule gave {p.shape} for an output of {out}")
        pats[node.name] = p
    return pats.get(target) or Pattern.empty(_dims(meta[target].shape), n)


def jacobian_sparsity(g: Graph, feeds: Mapping[str, Any], of: str, wrt: str) -> np.ndarray:
    """Which entries of d of / d wrt can be nonzero, from the graph alone (the feeds give only
    the run-time sizes): a bool array of the dense Jacobian's shape, out.shape + wrt.shape. It
    holds every entry any values could make nonzero (`S.reshape(out.size, wrt.size)` covers the
    sparse Jacobian's entries)."""
    check_wrt(g, [wrt])
    needed = g.needed_by([g.output_node(of), wrt])
    shapes = {name: leaf_value(g, feeds, name).shape for name in g.inputs if name in needed}
    p = sparsity_pattern(g, shapes, of, wrt)
    wrt_shape = leaf_value(g, feeds, wrt).shape
    return p.to_dense().reshape(p.shape + tuple(wrt_shape))


def colour_pattern(S: Pattern, by_rows: bool = False) -> tuple[int, np.ndarray]:
    """(number of colours, colour of each column) such that no two columns of a colour share a
    row of S (or, `by_rows`, of each row: no two rows of a colour share a column), by
    networkx's greedy colouring of the conflict graph. Where that graph would be too large to
    build, every column (row) is its own colour."""
    sp = scipy_sparse()
    m, n = S.size, S.n
    A = sp.csr_array((np.ones(S.nnz, np.int8), S.indices, S.indptr), shape=(m, n))
    if by_rows:
        A, n = A.T.tocsr(), m
    if n == 0:
        return 0, np.zeros(0, np.int64)
    row_nnz = np.diff(A.indptr).astype(np.int64)
    if int((row_nnz * row_nnz).sum()) > COLOUR_LIMIT:
        return n, np.arange(n, dtype=np.int64)
    conflicts = sp.triu(A.T @ A, k=1).tocoo()
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from(zip(conflicts.row.tolist(), conflicts.col.tolist(), strict=True))
    colouring = nx.coloring.greedy_color(G, strategy="largest_first")
    colour = np.fromiter((colouring[j] for j in range(n)), np.int64, n)
    return int(colour.max()) + 1, colour


def star_colour(S: Pattern) -> tuple[int, np.ndarray]:
    """(number of colours, colour of each vertex) of a star colouring of the graph whose edges
    are S's off-diagonal entries (S square, taken as symmetric): adjacent vertices differ and
    every path of four vertices has at least three colours, so each entry of a symmetric matrix
    of pattern S is alone in its colour in its row or in its column (Gebremedhin, Manne and
    Pothen 2005). A greedy pass in networkx's largest-first order."""
    rows = S.rows()
    off = rows != S.indices
    G = nx.Graph()
    G.add_nodes_from(range(S.n))
    G.add_edges_from(zip(rows[off].tolist(), S.indices[off].tolist(), strict=True))
    colour: dict[int, int] = {}
    for v in nx.coloring.strategy_largest_first(G, colour):
        coloured = [w for w in G[v] if w in colour]
        forbidden = {colour[w] for w in coloured}
        seen: dict[int, int] = {}
        for w in coloured:
            seen[colour[w]] = seen.get(colour[w], 0) + 1
        for w in coloured:
            cw = colour[w]
            for x in G[w]:
                if x == v or x not in colour:
                    continue
                # v-w-x-y with y coloured as w: x's colour on v would make it two-coloured
                if any(y != w and colour.get(y) == cw for y in G[x]):
                    forbidden.add(colour[x])
                # a-v-w-x with a coloured as w: x's colour on v would make a-v-w-x two-coloured
                if seen[cw] > 1:
                    forbidden.add(colour[x])
        colour[v] = next(c for c in range(len(forbidden) + 1) if c not in forbidden)
    out = np.fromiter((colour[j] for j in range(S.n)), np.int64, S.n)
    return (int(out.max()) + 1 if S.n else 0), out


def _fewer_by_symmetry(S: Pattern, count: int, colour: np.ndarray, take: tuple[np.ndarray, np.ndarray]
                       ) -> tuple[Pattern, int, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A symmetric matrix's pattern, colours and recovery: the star colouring's where it needs
    fewer colours than the columns (each entry read from its row where its column's colour is
    alone there, else from its column), else as given."""
    if int(S.nnz) > COLOUR_LIMIT:
        return S, count, colour, take
    sym = _symmetric(S)
    stars, star = star_colour(sym)
    if stars >= count:
        return S, count, colour, take
    rows = sym.rows()
    per_row = np.bincount(rows * stars + star[sym.indices], minlength=sym.size * stars)
    alone = per_row[rows * stars + star[sym.indices]] == 1
    take = (np.where(alone, star[sym.indices], star[rows]), np.where(alone, rows, sym.indices))
    return sym, stars, star, take


def _symmetric(S: Pattern) -> Pattern:
    """S with S's transpose: the pattern of a symmetric matrix that S's entries may be."""
    rows = S.rows()
    return Pattern.from_pairs(S.shape, S.n, np.concatenate([rows, S.indices]), np.concatenate([S.indices, rows]))


def _most_per_line(S: Pattern, by_rows: bool) -> int:
    """The most entries in a row of S (a column, `by_rows`)."""
    counts = np.diff(S.indptr) if not by_rows else np.bincount(S.indices, minlength=S.n)
    return int(counts.max(initial=0))


def scipy_sparse() -> Any:
    try:
        import scipy.sparse
    except ImportError:
        raise SparseMissingError("sparse Jacobians and Hessians need scipy: pip install 'cgraph-ad[sparse]'") from None
    return scipy.sparse


# ---- the functions ----------------------------------------------------------------------

def jacobian(g: Graph, feeds: Mapping[str, Any], of: str, wrt: str, mode: str = "auto", sparse: bool = False,
             memory_limit: int = MEMORY_LIMIT) -> Any:
    """d of / d wrt at these feeds: an array of shape out.shape + wrt.shape, or with
    `sparse=True` a scipy.sparse CSR array of (out.size, wrt.size) (see `Jacobian`)."""
    return Jacobian(g, of, wrt, mode=mode, sparse=sparse, memory_limit=memory_limit)(feeds)


def hessian(g: Graph, feeds: Mapping[str, Any], of: str, wrt: str, sparse: bool = False,
            memory_limit: int = MEMORY_LIMIT) -> Any:
    """d^2 of / d wrt^2 of the scalar output `of`: an array of shape wrt.shape + wrt.shape, or
    with `sparse=True` a scipy.sparse CSR array of (wrt.size, wrt.size) (see `Hessian`)."""
    return Hessian(g, of, wrt, sparse=sparse, memory_limit=memory_limit)(feeds)


def gradcheck(g: Graph, feeds: Mapping[str, Any], of: str, wrt: Sequence[str] | str,
              eps: float | None = None) -> float:
    """Max relative error of ReverseMode's gradient of the scalar `of` against central
    differences: max |analytic - numeric| / max(1, |analytic|, |numeric|) over all entries."""
    wrt = [wrt] if isinstance(wrt, str) else list(wrt)
    check_wrt(g, wrt)
    _, grads = ReverseMode(g, of=of, wrt=wrt).grad(feeds)
    ev = Evaluator(g, outputs=[of])
    worst = 0.0
    for w in wrt:
        base = leaf_value(g, feeds, w)
        h = eps if eps is not None else (1e-6 if base.dtype == np.float64 else 1e-3)
        numeric = np.empty(base.size)
        for k in range(base.size):
            f = []
            for sign in (1, -1):
                x = base.astype(np.float64).ravel()
                x[k] += sign * h
                x = x.reshape(base.shape).astype(base.dtype)
                if g.nodes[w].op == "param":
                    f.append(float(ev.run(feeds, params={w: x})[of]))
                else:
                    f.append(float(ev.run({**feeds, w: x})[of]))
            numeric[k] = (f[0] - f[1]) / (2 * h)
        analytic = np.asarray(grads[w], dtype=np.float64).ravel()
        scale = np.maximum(1.0, np.maximum(np.abs(analytic), np.abs(numeric)))
        if analytic.size:
            worst = max(worst, float(np.max(np.abs(analytic - numeric) / scale)))
    return worst

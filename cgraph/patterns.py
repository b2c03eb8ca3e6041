"""Sparsity patterns: which elements of the wrt value each element of a value depends on.

A static graph knows, before any number is computed, which outputs can depend on which
inputs. `jacobian_sparsity` propagates a `Pattern` through the graph node by node, each op
saying by its `pattern` rule (declared with it, cgraph/ops/registry.py) how its output's
pattern follows from its inputs'. A pattern is a boolean matrix of (value's size) rows and (wrt
size) columns, stored by rows (CSR: `indptr`, `indices`, sorted and without repeats), so that a
10,000-element tridiagonal Jacobian costs 30,000 entries, not 10^8.

Rules are written with a few operations, each exact on index arrays: `gather` (each output
element is one input element, or none: transposes, reshapes, slices), `group` (each input
element flows into one output element: sums), `union` (elementwise ops), and the helpers built
on them (`broadcast`, `reduce`, `moved`). This module needs numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Dims = tuple[int, ...]  # a concrete shape (patterns are made for run-time sizes)


class Pattern:
    """The dependency pattern of a value of `shape` on `n` wrt elements (CSR rows)."""

    __slots__ = ("indices", "indptr", "n", "shape")

    def __init__(self, shape: Sequence[int], n: int, indptr: np.ndarray, indices: np.ndarray) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.n = int(n)
        self.indptr = indptr
        self.indices = indices

    # ---- making patterns ------------------------------------------------------------------

    @classmethod
    def empty(cls, shape: Sequence[int], n: int) -> Pattern:
        """Depends on nothing (a constant, a value with no derivative)."""
        return cls(shape, n, np.zeros(_size(shape) + 1, np.int64), np.zeros(0, np.int64))

    @classmethod
    def identity(cls, shape: Sequence[int]) -> Pattern:
        """The wrt value itself: element i depends on wrt element i."""
        size = _size(shape)
        return cls(shape, size, np.arange(size + 1, dtype=np.int64), np.arange(size, dtype=np.int64))

    @classmethod
    def from_pairs(cls, shape: Sequence[int], n: int, rows: np.ndarray, cols: np.ndarray) -> Pattern:
        """From (row, column) entries, repeats allowed."""
        size = _size(shape)
        if n == 0 or rows.size == 0:
            return cls.empty(shape, n)
        keys = np.sort(rows.astype(np.int64) * n + cols)
        first = np.ones(keys.size, bool)
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        rows, cols = np.divmod(keys[first], n)
        indptr = np.zeros(size + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=size), out=indptr[1:])
        return cls(shape, n, indptr, cols)

    # ---- reading --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return _size(self.shape)

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def rows(self) -> np.ndarray:
        """The row of each entry (beside `indices`, the column of each)."""
        return np.repeat(np.arange(self.size, dtype=np.int64), np.diff(self.indptr))

    def to_dense(self) -> np.ndarray:
        """A bool array of (size, n)."""
        out = np.zeros((self.size, self.n), bool)
        out[self.rows(), self.indices] = True
        return out

    def __repr__(self) -> str:
        return f"Pattern(shape={self.shape}, n={self.n}, nnz={self.nnz})"

    # ---- the operations rules are written with -------------------------------------------

    def gather(self, src: np.ndarray) -> Pattern:
        """The pattern of a value of src's shape whose element k is this value's element
        src[k] (an index into the flattened value), or depends on nothing where src[k] < 0."""
        src = np.asarray(src, np.int64)
        flat = src.ravel()
        valid = flat >= 0
        s = np.where(valid, flat, 0)
        starts = self.indptr[s]
        lengths = np.where(valid, self.indptr[s + 1] - starts, 0)
        indptr = np.zeros(flat.size + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        pos = np.arange(indptr[-1], dtype=np.int64) + np.repeat(starts - indptr[:-1], lengths)
        return Pattern(src.shape, self.n, indptr, self.indices[pos])

    def group(self, dst: np.ndarray, shape: Sequence[int]) -> Pattern:
        """The pattern of a value of `shape` whose element k depends on every element j of
        this value with dst[j] == k (dst has this value's shape; dst[j] < 0: nowhere)."""
        rows = np.repeat(np.asarray(dst, np.int64).ravel(), np.diff(self.indptr))
        keep = rows >= 0
        return Pattern.from_pairs(shape, self.n, rows[keep], self.indices[keep])

    def broadcast(self, shape: Sequence[int]) -> Pattern:
        """numpy broadcasting of this value to `shape`."""
        if tuple(shape) == self.shape:
            return self
        return self.gather(np.broadcast_to(self.index(), tuple(shape)))

    def reduce(self, axes: Sequence[int], keepdims: bool = False) -> Pattern:
        """A reduction over `axes`: each result element depends on its whole group."""
        ndim = len(self.shape)
        gone = {a % ndim for a in axes} if ndim else set()
        kept = tuple(1 if i in gone else d for i, d in enumerate(self.shape))
        dst = np.broadcast_to(np.arange(_size(kept), dtype=np.int64).reshape(kept), self.shape)
        out = kept if keepdims else tuple(d for i, d in enumerate(self.shape) if i not in gone)
        return self.group(dst, out)

    def moved(self, fn: Callable[[np.ndarray], np.ndarray]) -> Pattern:
        """A value whose elements are this value's, moved: `fn` (numpy's own transpose,
        reshape, indexing) applied to the array of element indices says where each comes from."""
        return self.gather(fn(self.index()))

    def index(self) -> np.ndarray:
        """The flat index of each element, in the value's shape."""
        return np.arange(self.size, dtype=np.int64).reshape(self.shape)


def union(*patterns: Pattern) -> Pattern:
    """Elementwise union of patterns of one shape."""
    first = patterns[0]
    patterns = tuple(p for p in patterns if p.nnz) or (first,)
    if len(patterns) == 1:
        return patterns[0]
    rows = np.concatenate([p.rows() for p in patterns])
    cols = np.concatenate([p.indices for p in patterns])
    return Pattern.from_pairs(first.shape, first.n, rows, cols)


def elementwise(out: Dims, *xs: Pattern, **attrs: Any) -> Pattern:
    """ELEMENTWISE: each output element depends on the elements of the inputs that numpy
    broadcasting pairs with it."""
    return union(*(x.broadcast(out) for x in xs))


def dense(out: Dims, *xs: Pattern, **attrs: Any) -> Pattern:
    """DENSE (conservative): every output element may depend on every input element."""
    everything = union(*(x.reduce(range(len(x.shape))).broadcast(()) for x in xs))
    return everything.broadcast(out)


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


__all__ = ["Dims", "Pattern", "dense", "elementwise", "union"]

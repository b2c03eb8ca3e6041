"""The memory books: which intermediate buffers are alive, which values share one, and the
peak of the bytes alive at once (`stats.peak_bytes`).

One `Ledger` keeps them for every way a plan is accounted: `account` replays a plan's steps
with sizes from shape inference (the prediction, and the checkpoint planner's simulation), the
interpreter (`schedule.interpret_plan`) records what each kernel returned, and the generated
straight-line code (`codegen`) calls it for the values that views share (the others own their
buffer alone, so there it adds and subtracts their bytes inline: the same books, specialised).

Each buffer is counted once: a step's output is a new buffer, a view of an input's buffer
(counted once however many values show it), or its input's buffer written over in place (`out=`).
Feeds, params and constants are not counted: they live anyway.

Some kernels hold more than their output while they run, and the books count that transient
peak on top of what was alive before the step. A kernel that needs working memory (convolution's
im2col buffer) declares it (`OpDef.scratch`): its transient is its output plus those bytes. A
control-flow step returns `Results`: one new buffer per result, which its `result` steps then
share (each result is freed when neither the tuple nor a value showing it is alive), and the
most bytes its kernel held at once while it ran (its loop's carries and its body's own peak).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class Results(tuple):
    """The value of a control-flow node: its results (new arrays, no two sharing a buffer), with
    `peak`, the most bytes its kernel held at once, results included."""

    peak: int

    @classmethod
    def of(cls, arrays: Iterable[Any], peak: int) -> Results:
        r = cls(arrays)
        r.peak = peak
        return r

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(a.nbytes for a in self)


class Ledger:
    """Buffer ownership: each counted value's buffer owner, the owner's reference count and
    size. Methods return the bytes they add or free, so that the caller keeps `live` and `peak`
    in whatever variables are fastest for it."""

    __slots__ = ("holds", "owner", "refs", "size")

    def __init__(self) -> None:
        self.owner: dict[str, Any] = {}  # counted value -> the buffer it shows: the value that
        #                                  owns it, or (tuple, i) for result i of a tuple
        self.refs: dict[Any, int] = {}  # buffer -> how many live values use it
        self.size: dict[Any, int] = {}  # buffer -> bytes
        self.holds: dict[str, tuple[Any, ...]] = {}  # a tuple of results -> their buffers

    def new(self, name: str, nbytes: int) -> int:
        """`name` owns a new buffer of `nbytes`; returns the bytes added."""
        self.owner[name] = name
        self.refs[name] = 1
        self.size[name] = nbytes
        return nbytes

    def view(self, name: str, src: str) -> None:
        """`name` shows the buffer of `src` (nothing is counted if `src`'s is not: a leaf)."""
        o = self.owner.get(src)
        if o is not None:
            self.owner[name] = o
            self.refs[o] += 1

    def results(self, name: str, sizes: tuple[int, ...]) -> int:
        """`name` is a tuple of results, each a new buffer of `sizes[i]`; returns the bytes added."""
        keys = tuple((name, i) for i in range(len(sizes)))
        for k, n in zip(keys, sizes, strict=True):
            self.refs[k] = 1
            self.size[k] = n
        self.holds[name] = keys
        return sum(sizes)

    def part(self, name: str, src: str, index: int) -> None:
        """`name` is result `index` of the tuple `src`: it shows that result's buffer."""
        k = self.holds[src][index]
        self.owner[name] = k
        self.refs[k] += 1

    def inplace(self, name: str, src: str) -> None:
        """`name` was written over `src`, which dies at this step: the buffer passes to it."""
        self.owner[name] = self.owner.pop(src)

    def release(self, name: str) -> int:
        """Forget `name`; returns the bytes freed (its buffer's, if it held the last reference)."""
        keys = self.holds.pop(name, None)
        if keys is not None:
            return sum(self._drop(k) for k in keys)
        o = self.owner.pop(name, None)
        if o is None:
            return 0
        return self._drop(o)

    def _drop(self, o: Any) -> int:
        if self.refs[o] > 1:
            self.refs[o] -= 1
            return 0
        del self.refs[o]
        return self.size.pop(o)

    def record(self, step: Any, nbytes: int | tuple[int, ...], shares: bool) -> int:
        """The output of one step of a plan (`nbytes`, a tuple of them for a tuple of results;
        `shares`: a view step whose output does share its input's buffer); returns the bytes
        added. The step's frees are the caller's to release."""
        if step.part >= 0:
            self.part(step.name, step.args[0], step.part)
            added = 0
        elif step.multi:
            added = self.results(step.name, nbytes)  # type: ignore[arg-type]
        elif step.view and shares:
            self.view(step.name, step.args[0])
            added = 0
        elif step.inplace >= 0:
            self.inplace(step.name, step.args[step.inplace])
            added = 0
        else:
            added = self.new(step.name, nbytes)  # type: ignore[arg-type]
        return added


def account(steps: Iterable[Any], sizes: Mapping[str, Any], scalars: set[str],
            transient: Mapping[str, int] | None = None) -> int:
    """The peak bytes of running `steps` when their outputs have these sizes (a tuple of sizes
    for a tuple of results), from shapes alone (`scalars`: the 0-d values, which numpy hands out
    as scalars that no view can share; `transient`: the bytes each step's kernel holds at once
    beyond what was alive before it, its output included, where that is more than its output:
    scratch, a loop's carries)."""
    return tally(steps, sizes, scalars, transient)[0]


def tally(steps: Iterable[Any], sizes: Mapping[str, Any], scalars: set[str],
          transient: Mapping[str, int] | None = None) -> tuple[int, int]:
    """`account`'s peak, and the bytes still alive after the last step."""
    books = Ledger()
    live = peak = 0
    transient = transient or {}
    for step in steps:
        added = 0
        if step.update < 0:  # an update step makes no value
            added = books.record(step, sizes[step.name], not step.args or step.args[0] not in scalars)
        peak = max(peak, live + transient.get(step.name, 0), live + added)
        live += added
        for f in step.free:
            live -= books.release(f)
    return peak, live


__all__ = ["Ledger", "Results", "account", "tally"]

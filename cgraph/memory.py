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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class Ledger:
    """Buffer ownership: each counted value's buffer owner, the owner's reference count and
    size. Methods return the bytes they add or free, so that the caller keeps `live` and `peak`
    in whatever variables are fastest for it."""

    __slots__ = ("owner", "refs", "size")

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}  # counted value -> the value that owns its buffer
        self.refs: dict[str, int] = {}  # buffer owner -> how many live values use the buffer
        self.size: dict[str, int] = {}  # buffer owner -> bytes

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

    def inplace(self, name: str, src: str) -> None:
        """`name` was written over `src`, which dies at this step: the buffer passes to it."""
        self.owner[name] = self.owner.pop(src)

    def release(self, name: str) -> int:
        """Forget `name`; returns the bytes freed (its buffer's, if it held the last reference)."""
        o = self.owner.pop(name, None)
        if o is None:
            return 0
        if self.refs[o] > 1:
            self.refs[o] -= 1
            return 0
        del self.refs[o]
        return self.size.pop(o)

    def record(self, step: Any, nbytes: int, shares: bool) -> int:
        """The output of one step of a plan (`nbytes`; `shares`: a view step whose output does
        share its input's buffer); returns the bytes added. The step's frees are the caller's
        to release."""
        if step.view and shares:
            self.view(step.name, step.args[0])
            added = 0
        elif step.inplace >= 0:
            self.inplace(step.name, step.args[step.inplace])
            added = 0
        else:
            added = self.new(step.name, nbytes)
        return added


def account(steps: Iterable[Any], sizes: Mapping[str, int], scalars: set[str]) -> int:
    """The peak bytes of running `steps` when their outputs have these sizes, from shapes alone
    (`scalars`: the 0-d values, which numpy hands out as scalars that no view can share)."""
    books = Ledger()
    live = peak = 0
    for step in steps:
        if step.update < 0:  # an update step makes no value
            live += books.record(step, sizes[step.name], not step.args or step.args[0] not in scalars)
        peak = max(peak, live)
        for f in step.free:
            live -= books.release(f)
    return peak


__all__ = ["Ledger", "account"]

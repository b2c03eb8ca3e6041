"""Convolution and pooling over images in NCHW layout, with torch's semantics (OIHW kernels;
stride, padding, dilation, groups; max pooling's padding never wins a max, average pooling
counts the padding by default).

Kernels work by im2col: for each kernel offset (i, j), the input positions it meets at every
output position form a strided slice of the image, copied into one column buffer (zeros, or
-inf for max pooling, where the slice runs into the padding; no padded copy of the image is
made), and a convolution is then one BLAS matrix product per group. The column buffer and the
other temporaries a kernel holds are declared as its `scratch`, so that a plan's memory books
count them (predicted == measured); numpy may also copy an input that is not contiguous.

Derivatives are again ops of this module, so that second derivatives work: a convolution's
derivatives are convolutions (`conv2d_transpose` for the input, `conv2d_filter_grad` for the
kernel, three bilinear ops whose derivatives are each other), max pooling's are
`max_pool2d_scatter` (the VJP: each window's cotangent shared among the elements that reach
its max) and `max_pool2d_gather` (the JVP, its adjoint), average pooling's is
`avg_pool2d_scatter`.

Batching (cg.vmap) folds the batch into the images' own batch axis; kernels that differ from
example to example are applied as each example's windows (a convolution with one-hot kernels,
exact) times its kernel, one batched matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from cgraph.errors import BatchingError, DerivativeError, ShapeError
from cgraph.ops.array import (
    _with_shape,
    broadcast_batch,
    concat,
    getitem,
    matmul,
    reshaped,
    shape_like,
    sizes_of,
    transpose,
)
from cgraph.ops.elementwise import where
from cgraph.ops.registry import FLOAT, NONDIFF, SAME_FLOAT, ZERO, Attr, Operand, apply, define, rule
from cgraph.patterns import Dims, Pattern, dense, union
from cgraph.shapes import Meta, Shape

if TYPE_CHECKING:
    from cgraph.graph import Tensor

# ---- geometry -----------------------------------------------------------------------------

GEOMETRY = {
    "stride": Attr("ints", (1, 1), minimum=1, doc="(sh, sw): the step between windows"),
    "padding": Attr("ints", (0, 0, 0, 0), minimum=0,
                    doc="(top, left, bottom, right): rows and columns added around the image (ONNX's pads order)"),
}
CONV = {**GEOMETRY,
        "dilation": Attr("ints", (1, 1), minimum=1, doc="(dh, dw): the step between a kernel's taps"),
        "groups": Attr("int", 1, minimum=1, doc="channels split into this many groups, convolved separately")}


def out_size(n: int | None, k: int | None, stride: int, dilation: int, lo: int, hi: int) -> int | None:
    """The number of windows along an axis of n positions (padded by lo and hi), torch's
    floor((n + lo + hi - dilation * (k - 1) - 1) / stride) + 1."""
    if n is None or k is None:
        return None
    return (n + lo + hi - dilation * (k - 1) - 1) // stride + 1


def _check_geometry(stride: tuple, padding: tuple, dilation: tuple = (1, 1)) -> None:
    for name, value, n in (("stride", stride, 2), ("padding", padding, 4), ("dilation", dilation, 2)):
        if len(value) != n:
            raise ShapeError(f"{name} must have {n} entries, got {tuple(value)}")


def _out_hw(x: Meta, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple = (1, 1)) -> tuple:
    """(Ho, Wo) of windows of `kernel` over x's last two axes; ShapeError where none fits."""
    out = []
    for a in (0, 1):
        n = x.shape[2 + a]
        size = out_size(n, kernel[a], stride[a], dilation[a], padding[a], padding[a + 2])
        if size is not None and size < 1:
            raise ShapeError(f"a window of {kernel[a]} (dilation {dilation[a]}) does not fit in a size of "
                             f"{n} padded by {padding[a]} and {padding[a + 2]}")
        out.append(size)
    return tuple(out)


def _image(m: Meta, what: str) -> None:
    if m.ndim != 4:
        raise ShapeError(f"{what} must be 4-D (NCHW), got {m.ndim}-D")


def _agree(a: int | None, b: int | None, what: str) -> None:
    if a is not None and b is not None and a != b:
        raise ShapeError(f"{what}: {a} and {b} differ")


def _span(n_in: int, n_out: int, k: int, stride: int, dilation: int, pad: int) -> tuple[int, int, slice]:
    """For kernel offset k along one axis: the outputs o in [lo, hi) whose input position
    o * stride - pad + k * dilation lies inside [0, n_in), and the slice of inputs they read."""
    off = k * dilation - pad
    lo = max(0, -(off // stride))
    hi = max(lo, min(n_out, -(-(n_in - off) // stride)))
    start = lo * stride + off
    return lo, hi, slice(start, start + (hi - lo - 1) * stride + 1 if hi > lo else start, stride)


def _taps(hw: tuple, out_hw: tuple, kernel: tuple, stride: tuple, padding: tuple,
          dilation: tuple = (1, 1)) -> Iterator[tuple[int, int, tuple, tuple]]:
    """For each kernel offset (i, j): the output region it touches and the input slice there,
    each as an index of the last two axes."""
    for i in range(kernel[0]):
        lo_h, hi_h, rows = _span(hw[0], out_hw[0], i, stride[0], dilation[0], padding[0])
        for j in range(kernel[1]):
            lo_w, hi_w, cols = _span(hw[1], out_hw[1], j, stride[1], dilation[1], padding[1])
            yield i, j, (..., slice(lo_h, hi_h), slice(lo_w, hi_w)), (..., rows, cols)


def _im2col(x: np.ndarray, kernel: tuple, out_hw: tuple, stride: tuple, padding: tuple, dilation: tuple,
            dtype: np.dtype, images_first: bool = False) -> np.ndarray:
    """The column buffer (C, kh, kw, N, Ho, Wo): the input under each kernel offset at each
    output position (0 in the padding), laid out so that a convolution is one matrix product
    per group; or, `images_first`, (N, C, kh, kw, Ho, Wo): one product per image and group,
    whose results are already in NCHW order."""
    N, C = x.shape[:2]
    if images_first:
        cols = buf = np.zeros((N, C, *kernel, *out_hw), dtype)
    else:
        buf = np.zeros((C, *kernel, N, *out_hw), dtype)
        cols = buf.transpose(3, 0, 1, 2, 4, 5)  # (N, C, kh, kw, Ho, Wo): a view to write through
    for i, j, region, taps in _taps(x.shape[2:], out_hw, kernel, stride, padding, dilation):
        cols[:, :, i, j][region] = x[taps]
    return buf


def _col2im(buf: np.ndarray, shape: tuple, stride: tuple, padding: tuple, dilation: tuple,
            images_first: bool = False) -> np.ndarray:
    """The adjoint of _im2col: a column buffer (C, kh, kw, N, Ho, Wo), or (N, C, kh, kw, Ho, Wo)
    `images_first`, summed back into zeros of the image's `shape` (N, C, H, W)."""
    out = np.zeros(shape, buf.dtype)
    cols = buf if images_first else buf.transpose(3, 0, 1, 2, 4, 5)
    for i, j, region, taps in _taps(shape[2:], cols.shape[4:], cols.shape[2:4], stride, padding, dilation):
        out[taps] += cols[:, :, i, j][region]
    return out


def _matmul_groups(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[k] = a[k] @ b[k] for each group k, one BLAS product each (numpy's stacked matmul can
    miss BLAS for transposed operands)."""
    for k in range(out.shape[0]):
        np.matmul(a[k], b[k], out=out[k])
    return out


def _by_channel(g: np.ndarray, groups: int, dtype: np.dtype) -> np.ndarray:
    """g (N, Co, Ho, Wo) copied as (groups, Co / groups, N Ho Wo): channels first."""
    N, Co, Ho, Wo = g.shape
    return np.ascontiguousarray(g.transpose(1, 0, 2, 3), dtype=dtype).reshape(groups, Co // groups, N * Ho * Wo)


def _col_bytes(x: Any, w: Any, out_hw: tuple, dtype: np.dtype) -> int:
    """The bytes of the column buffer of x under w's kernel."""
    N, C = x.shape[:2]
    return int(N * C * w.shape[2] * w.shape[3] * out_hw[0] * out_hw[1]) * np.dtype(dtype).itemsize


def _nbytes(shape: tuple, dtype: Any) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


# ---- batching: the batch folded into the images' batch axis ---------------------------------

def _merged(x: Tensor) -> Tensor:
    """A batch of images (B, N, C, H, W) as images (B N, C, H, W)."""
    return reshaped(x, [sizes_of(x, (0, 1)), *(sizes_of(x, (a,)) for a in range(2, x.ndim))])


def _split(y: Tensor, like: Tensor) -> Tensor:
    """Images (B N, ...) back as a batch (B, N, ...), B and N those of `like`."""
    return reshaped(y, [sizes_of(like, (0,)), sizes_of(like, (1,)), *(sizes_of(y, (a,)) for a in range(1, y.ndim))])


# ---- sparsity patterns: which elements each window reads ------------------------------------

def _tap_sources(x_shape: tuple, out_hw: tuple, kernel: tuple, stride: tuple, padding: tuple,
                 dilation: tuple = (1, 1)) -> list[np.ndarray]:
    """For each kernel tap: an array of the output's image shape (N, C, Ho, Wo) holding the flat
    index of the input element the tap reads there (in an input of `x_shape`), or -1 in the
    padding."""
    index = np.arange(math.prod(x_shape), dtype=np.int64).reshape(x_shape)
    out = []
    for _, _, region, tap in _taps(x_shape[2:], out_hw, kernel, stride, padding, dilation):
        src = np.full((*x_shape[:2], *out_hw), -1, np.int64)
        src[region] = index[tap]
        out.append(src)
    return out


def _window_pattern(out: Dims, x: Pattern, *, kernel: tuple, stride: tuple, padding: tuple, **a: Any) -> Pattern:
    """each output element depends on its window's elements (exact)"""
    return union(*(x.gather(src) for src in _tap_sources(x.shape, out[2:], kernel, stride, padding)))


def _spread_pattern(g: Pattern, shape: tuple, kernel: tuple, stride: tuple, padding: tuple) -> Pattern:
    """each element of an image of `shape` depends on the elements of g (one per window) whose
    window covers it"""
    if not math.prod(shape):
        return Pattern.empty(shape, g.n)
    return union(*(g.group(src, shape) for src in _tap_sources(shape, g.shape[2:], kernel, stride, padding)))


def _conv_pattern(out: Dims, x: Pattern, w: Pattern, *, stride: tuple, padding: tuple, dilation: tuple,
                  groups: int) -> Pattern:
    """each output element depends on its window's elements in its group's channels, and on its
    output channel's kernel (exact)"""
    N, C = x.shape[:2]
    co, cg = w.shape[:2]
    parts = []
    if x.nnz:
        for c in range(cg):  # the c-th channel of each output channel's group
            picked = x.gather(np.arange(math.prod(x.shape)).reshape(x.shape)[
                :, (np.arange(co) // (co // groups)) * cg + c])  # (N, Co, H, W): that channel, per output channel
            parts += [picked.gather(src) for src in _tap_sources(picked.shape, out[2:], w.shape[2:], stride, padding,
                                                                 dilation)]
    if w.nnz:
        per_channel = w.reduce((1, 2, 3), keepdims=False)  # (Co,)
        parts.append(per_channel.gather(np.broadcast_to(np.arange(co)[:, None, None], out)))
    return union(*parts) if parts else Pattern.empty(out, x.n)


def _windows(x: Tensor, batched: bool, kernel: tuple, groups: int, **geometry: Any) -> Tensor:
    """Images (B, N, C, H, W), or (N, C, H, W) when not `batched`, as each window's elements,
    (B, N, groups, C / groups kh kw, Ho Wo) (or without B), by a convolution with one-hot
    kernels (exact)."""
    C = x.shape[-3]
    if C is None:
        raise BatchingError("conv2d: batching kernels that differ between examples needs the channels known")
    eye = np.eye(kernel[0] * kernel[1], dtype=x.dtype).reshape(-1, 1, *kernel)
    taps = x.graph.constant(None, np.tile(eye, (C, 1, 1, 1)))  # channel c kh kw + k: 1 at tap k
    cols = _conv2d(_merged(x) if batched else x, taps, groups=C, **geometry)
    lead = [sizes_of(x, (0,)), sizes_of(x, (1,))] if batched else [sizes_of(x, (0,))]
    return reshaped(cols, [*lead, groups, C // groups * kernel[0] * kernel[1], sizes_of(cols, (2, 3))])


def _per_group(t: Tensor, groups: int, lead: int) -> Tensor:
    """(lead axes..., Co, Ho, Wo) as (lead axes..., groups, Co / groups, Ho Wo)."""
    (co,) = _static(t, (lead,))
    return reshaped(t, [*(sizes_of(t, (a,)) for a in range(lead)), groups, co // groups,
                        sizes_of(t, (lead + 1, lead + 2))])


def _static(t: Tensor, axes: Sequence[int]) -> tuple[int, ...]:
    """t's sizes along `axes`, which batching needs known."""
    sizes = tuple(t.shape[a] for a in axes)
    if None in sizes:
        raise BatchingError(f"{t.name}: batching it needs its channel and kernel sizes known, got {t.shape}")
    return cast(tuple[int, ...], sizes)


def _kernels(w: Tensor, groups: int) -> Tensor:
    """Kernels per example (B, Co, Cg, kh, kw) as (B, 1, groups, Co / groups, Cg kh kw)."""
    co, cg, kh, kw = _static(w, (1, 2, 3, 4))
    return reshaped(w, [sizes_of(w, (0,)), 1, groups, co // groups, cg * kh * kw])


def _conv_batch(batched: tuple[bool, ...], x: Tensor, w: Tensor, **a: Any) -> Tensor:
    """the op on the images of every example as one batch; kernels that differ between
    examples: each example's windows times its kernel (a batched matmul)"""
    if not batched[1]:
        return _split(_conv2d(_merged(x), w, **a), x)
    cols = _windows(x, batched[0], w.shape[3:], **a)                          # (B?, N, G, Cg K, L)
    out = matmul(_kernels(w, a["groups"]), cols)                              # (B, N, G, Og, L)
    hw = _out_hw(Meta(x.shape[-4:], x.dtype), w.shape[3:], a["stride"], a["padding"], a["dilation"])
    if None in hw:
        raise BatchingError(f"conv2d: batching kernels that differ between examples needs the images' size, got "
                            f"{x.shape}")
    n = sizes_of(x, (1,)) if batched[0] else sizes_of(x, (0,))
    return reshaped(out, [sizes_of(w, (0,)), n, *_static(w, (1,)), *cast(tuple[int, int], hw)])


def _transpose_batch(batched: tuple[bool, ...], g: Tensor, w: Tensor, *, size: tuple, **a: Any) -> Tensor:
    """the op on the cotangents of every example as one batch; kernels that differ between
    examples: each example's kernel times its cotangent (a batched matmul), then the windows put
    back (a transposed convolution with one-hot kernels)"""
    if not batched[1]:
        return _split(conv2d_transpose(_merged(g), w, size=size, **a), g)
    groups, (cg, kh, kw) = a["groups"], _static(w, (2, 3, 4))
    lead = 2 if batched[0] else 1
    cols = matmul(transpose(_kernels(w, groups), (0, 1, 2, 4, 3)), _per_group(g, groups, lead))  # (B, N, G, CgK, L)
    cols = reshaped(cols, [sizes_of(cols, (0, 1)), cg * groups * kh * kw, sizes_of(g, (lead + 1,)),
                           sizes_of(g, (lead + 2,))])
    eye = np.eye(kh * kw, dtype=g.dtype).reshape(-1, 1, kh, kw)
    taps = g.graph.constant(None, np.tile(eye, (cg * groups, 1, 1, 1)))
    out = conv2d_transpose(cols, taps, size=size, **{**a, "groups": cg * groups})
    return reshaped(out, [sizes_of(w, (0,)), sizes_of(g, (lead - 1,)), cg * groups, *size])


def _filter_batch(batched: tuple[bool, ...], x: Tensor, g: Tensor, *, kernel: tuple, **a: Any) -> Tensor:
    """each example's windows times its cotangent, summed over its images and positions (a
    batched matmul)"""
    groups = a["groups"]
    cols = _windows(x, batched[0], kernel, **a)                                # (B?, N, G, Cg K, L)
    swap = (*range(cols.ndim - 2), cols.ndim - 1, cols.ndim - 2)
    per = matmul(_per_group(g, groups, 2 if batched[1] else 1), transpose(cols, swap))
    out = apply("sum", per, axes=(1,), keepdims=False)                         # (B, G, Og, Cg K): over the images
    (co,), (c,) = _static(g, (g.ndim - 3,)), _static(x, (x.ndim - 3,))
    cg = c // groups
    return reshaped(out, [sizes_of(out, (0,)), co, cg, *kernel])


def _copied(batched: tuple[bool, ...], *xs: Tensor) -> list[Tensor]:
    """xs, each one not batched repeated along the batched one's batch axis in a buffer of its
    own (a `where` that keeps every element: a C-ordered copy, which np.concatenate of a
    broadcast view is not), so that folding its axes is a view, as the plan's books expect."""
    ref = next(x for x, b in zip(xs, batched, strict=True) if b)
    return [x if b else where(True, y := broadcast_batch(x, ref), y) for x, b in zip(xs, batched, strict=True)]


def _images_batch(op: str) -> Any:
    def rule(batched: tuple[bool, ...], *xs: Tensor, **attrs: Any) -> Tensor:
        images = _copied(batched, *xs)
        return _split(apply(op, *[_merged(t) for t in images], **attrs), images[0])
    rule.__doc__ = "the op on the images of every example as one batch (the batch folded into the images' axis)"
    return rule


def _avg_scatter_batch(batched: tuple[bool, ...], g: Tensor, *s: Tensor, shape: tuple, **a: Any) -> Tensor:
    """the op on the cotangents of every example as one batch (the batch folded into the images'
    axis)"""
    if len(batched) > 1 and batched[1]:
        raise BatchingError("avg_pool2d_scatter: a target shape that differs from example to example cannot be batched")
    rest = [d if d is not None else getitem(s[0], (slice(i, i + 1),)) for i, d in enumerate(shape) if i]
    sizes = [sizes_of(g, (0, 1)), *rest]
    if all(isinstance(d, int) for d in sizes):
        out = avg_pool2d_scatter(_merged(g), shape=tuple(sizes), **a)
    else:
        parts = [d if isinstance(d, Operand) else g.graph.constant(None, np.array([d], np.int64)) for d in sizes]
        out = avg_pool2d_scatter(_merged(g), concat(parts, 0), shape=tuple(d if isinstance(d, int) else None
                                                                             for d in sizes), **a)
    return _split(out, g)


# ---- conv2d and its derivatives -------------------------------------------------------------

def _conv_shape(x: Meta, w: Meta, *, stride: tuple, padding: tuple, dilation: tuple, groups: int) -> Shape:
    """x is (N, C, H, W) and w (Co, C / groups, kh, kw), Co a multiple of `groups` (where known);
    `stride` and `dilation` have 2 entries, `padding` 4; the result is (N, Co, Ho, Wo), with
    Ho = floor((H + top + bottom - dh (kh - 1) - 1) / sh) + 1 (and Wo alike), at least 1."""
    _image(x, "the input")
    _image(w, "the kernel")
    _check_geometry(stride, padding, dilation)
    C, Co = x.shape[1], w.shape[0]
    _agree(C, None if w.shape[1] is None else w.shape[1] * groups, "input channels and kernel channels * groups")
    if Co is not None and Co % groups:
        raise ShapeError(f"{Co} output channels do not split into {groups} groups")
    return (x.shape[0], Co, *_out_hw(x, w.shape[2:], stride, padding, dilation))


def _conv_kernel(x: np.ndarray, w: np.ndarray, *, stride: tuple, padding: tuple, dilation: tuple,
                 groups: int) -> np.ndarray:
    N = x.shape[0]
    Co, Cg, kh, kw = w.shape
    dtype = np.result_type(x, w)
    Ho, Wo = _out_hw(Meta(x.shape, dtype), (kh, kw), stride, padding, dilation)
    cols = _im2col(x, (kh, kw), (Ho, Wo), stride, padding, dilation, dtype, images_first=True)
    w2 = w.astype(dtype, copy=False).reshape(groups, Co // groups, Cg * kh * kw)
    # one BLAS product per image and group, written straight into the NCHW result: no second
    # buffer and no transposing copy (1.5-2x faster than one product over channels-first columns)
    out = np.matmul(w2, cols.reshape(N, groups, Cg * kh * kw, Ho * Wo))
    return out.reshape(N, Co, Ho, Wo)


def _conv_scratch(x: Any, w: Any, *, stride: tuple, padding: tuple, dilation: tuple, groups: int) -> int:
    """The column buffer (the products are written into the output)."""
    dtype = np.result_type(x.dtype, w.dtype)
    out_hw = _out_hw(Meta(x.shape, dtype), w.shape[2:], stride, padding, dilation)
    return _col_bytes(x, w, out_hw, dtype)


def _transpose_shape(g: Meta, w: Meta, *, stride: tuple, padding: tuple, dilation: tuple, groups: int,
                     size: tuple) -> Shape:
    """g is (N, Co, Ho, Wo) and w (Co, Cg, kh, kw); `size` is (H, W); the result is (N, Cg * groups,
    H, W), the input shape of the conv2d that gives (Ho, Wo) from it (where sizes are known)."""
    _image(g, "the cotangent")
    _image(w, "the kernel")
    _check_geometry(stride, padding, dilation)
    if len(size) != 2:
        raise ShapeError(f"size must have 2 entries, got {tuple(size)}")
    _agree(g.shape[1], w.shape[0], "channels of the cotangent and the kernel")
    x = Meta((g.shape[0], None, *size), g.dtype)
    for a, b in zip(g.shape[2:], _out_hw(x, w.shape[2:], stride, padding, dilation), strict=True):
        _agree(a, b, "the cotangent's size and the convolution's output size")
    return (g.shape[0], None if w.shape[1] is None else w.shape[1] * groups, *size)


def _transpose_kernel(g: np.ndarray, w: np.ndarray, *, stride: tuple, padding: tuple, dilation: tuple,
                      groups: int, size: tuple) -> np.ndarray:
    N, Co, Ho, Wo = g.shape
    _, Cg, kh, kw = w.shape
    dtype = np.result_type(g, w)
    w2 = w.astype(dtype, copy=False).reshape(groups, Co // groups, Cg * kh * kw).transpose(0, 2, 1)
    # each image's columns from its own product with g as it lies (NCHW): no copy of g
    cols = np.matmul(w2, g.astype(dtype, copy=False).reshape(N, groups, Co // groups, Ho * Wo))
    return _col2im(cols.reshape(N, Cg * groups, kh, kw, Ho, Wo), (N, Cg * groups, *size), stride, padding, dilation,
                   images_first=True)


def _transpose_scratch(g: Any, w: Any, **attrs: Any) -> int:
    """The column buffer (and a copy of g in the result's dtype when g's differs)."""
    dtype = np.result_type(g.dtype, w.dtype)
    return (_nbytes(g.shape, dtype) if np.dtype(g.dtype) != dtype else 0) + \
        _col_bytes(Meta((g.shape[0], w.shape[1] * attrs["groups"]), dtype), w, g.shape[2:], dtype)


def _filter_shape(x: Meta, g: Meta, *, stride: tuple, padding: tuple, dilation: tuple, groups: int,
                  kernel: tuple) -> Shape:
    """x is (N, C, H, W) and g (N, Co, Ho, Wo), C and Co multiples of `groups`; `kernel` is (kh, kw);
    (Ho, Wo) is conv2d's output size for x and the kernel (where known); the result is
    (Co, C / groups, kh, kw)."""
    _image(x, "the input")
    _image(g, "the cotangent")
    _check_geometry(stride, padding, dilation)
    if len(kernel) != 2:
        raise ShapeError(f"kernel must have 2 entries, got {tuple(kernel)}")
    _agree(x.shape[0], g.shape[0], "batch sizes of the input and the cotangent")
    for a, b in zip(g.shape[2:], _out_hw(x, kernel, stride, padding, dilation), strict=True):
        _agree(a, b, "the cotangent's size and the convolution's output size")
    for n, what in ((x.shape[1], "input"), (g.shape[1], "output")):
        if n is not None and n % groups:
            raise ShapeError(f"{n} {what} channels do not split into {groups} groups")
    return (g.shape[1], None if x.shape[1] is None else x.shape[1] // groups, *kernel)


def _filter_kernel(x: np.ndarray, g: np.ndarray, *, stride: tuple, padding: tuple, dilation: tuple,
                   groups: int, kernel: tuple) -> np.ndarray:
    C = x.shape[1]
    Co, out_hw = g.shape[1], g.shape[2:]
    dtype = np.result_type(x, g)
    cols = _im2col(x, kernel, out_hw, stride, padding, dilation, dtype)
    cols = cols.reshape(groups, C // groups * kernel[0] * kernel[1], -1)
    out = np.empty((groups, Co // groups, cols.shape[1]), dtype)
    out = _matmul_groups(_by_channel(g, groups, dtype), cols.transpose(0, 2, 1), out)
    return out.reshape(Co, C // groups, *kernel)


def _filter_scratch(x: Any, g: Any, *, kernel: tuple, **attrs: Any) -> int:
    """The column buffer and a channels-first copy of g."""
    dtype = np.result_type(x.dtype, g.dtype)
    return _col_bytes(x, Meta((None, None, *kernel), dtype), g.shape[2:], dtype) + _nbytes(g.shape, dtype)


def _hw(x: Tensor, what: str) -> tuple[int, int]:
    if None in x.shape[2:]:
        raise DerivativeError(f"{x.name}: the derivative of {what} needs the image's height and width "
                              f"known when the graph is built, got {x.shape}")
    return tuple(x.shape[2:])  # type: ignore[return-value]


def _kernel_hw(w: Tensor) -> tuple[int, int]:
    if None in w.shape[2:]:
        raise DerivativeError(f"{w.name}: the derivative of conv2d needs the kernel's size known, got {w.shape}")
    return tuple(w.shape[2:])  # type: ignore[return-value]


def _t(g: Tensor, w: Tensor, like: Tensor, a: dict) -> Tensor:
    return conv2d_transpose(g, w, size=_hw(like, "conv2d"), **a)


def _f(x: Tensor, g: Tensor, w: Tensor, a: dict) -> Tensor:
    return conv2d_filter_grad(x, g, kernel=_kernel_hw(w), **a)


_conv2d = define(
    "conv2d", _conv_kernel, inputs=("x", "w"), shape=_conv_shape, dtype=FLOAT, attrs=CONV, scratch=_conv_scratch,
    batch=_conv_batch, pattern=_conv_pattern,
    jvp=(lambda t, out, x, w, **a: _conv2d(t, w, **a), lambda t, out, x, w, **a: _conv2d(x, t, **a)),
    vjp=(lambda g, out, x, w, **a: _t(g, w, x, a), lambda g, out, x, w, **a: _f(x, g, w, a)),
    doc="the 2-D convolution (cross-correlation, as torch.nn.functional.conv2d without bias) of images x "
        "(N, C, H, W) with kernels w (Co, C / groups, kh, kw): out[n, o, p, q] = sum over c, i, j of "
        "w[o, c, i, j] x[n, first(o) + c, sh p + dh i - top, sw q + dw j - left] (0 outside x), first(o) = "
        "(o // (Co / groups)) (C / groups) the first channel of o's group",
    grad_doc="JVP: conv2d(t_x, w) + conv2d(x, t_w); VJP: conv2d_transpose(g, w) to x, "
             "conv2d_filter_grad(x, g) to w")

conv2d_transpose = define(
    "conv2d_transpose", _transpose_kernel, inputs=("g", "w"), shape=_transpose_shape, dtype=FLOAT,
    attrs={**CONV, "size": Attr("ints", doc="(H, W) of conv2d's input")}, scratch=_transpose_scratch,
    batch=_transpose_batch, pattern=dense,
    jvp=(lambda t, out, g, w, **a: conv2d_transpose(t, w, **a), lambda t, out, g, w, **a: conv2d_transpose(g, t, **a)),
    vjp=(lambda c, out, g, w, *, size, **a: _conv2d(c, w, **a),
         lambda c, out, g, w, *, size, **a: _f(c, g, w, a)),
    doc="the VJP of conv2d wrt its input (a transposed convolution): each of g's elements spread over "
        "the input positions its window covers, weighted by the kernel, summed; the result has "
        "height and width `size`",
    grad_doc="JVP: conv2d_transpose(t_g, w) + conv2d_transpose(g, t_w); VJP: conv2d(c, w) to g, "
             "conv2d_filter_grad(c, g) to w")

conv2d_filter_grad = define(
    "conv2d_filter_grad", _filter_kernel, inputs=("x", "g"), shape=_filter_shape, dtype=FLOAT,
    attrs={**CONV, "kernel": Attr("ints", doc="(kh, kw): the kernel's size")}, scratch=_filter_scratch,
    batch=_filter_batch, pattern=dense,
    jvp=(lambda t, out, x, g, **a: conv2d_filter_grad(t, g, **a),
         lambda t, out, x, g, **a: conv2d_filter_grad(x, t, **a)),
    vjp=(lambda c, out, x, g, *, kernel, **a: _t(g, c, x, a),
         lambda c, out, x, g, *, kernel, **a: _conv2d(x, c, **a)),
    doc="the VJP of conv2d wrt its kernel: out[o, c, i, j] = sum over n, p, q of "
        "g[n, o, p, q] x[n, first(o) + c, sh p + dh i - top, sw q + dw j - left] (first(o) as in conv2d)",
    grad_doc="JVP: conv2d_filter_grad(t_x, g) + conv2d_filter_grad(x, t_g); VJP: conv2d_transpose(g, c) to x, "
             "conv2d(x, c) to g")


# ---- pooling ----------------------------------------------------------------------------------

POOL = {"kernel": Attr("ints", minimum=1, doc="(kh, kw): the window's size"), **GEOMETRY}
AVG = {**POOL, "count_include_pad": Attr("bool", True, doc="divide by the window's size (true) or by the "
                                                          "number of its elements inside the image")}


def _pool_shape(x: Meta, *, kernel: tuple, stride: tuple, padding: tuple, **attrs: Any) -> Shape:
    """x is (N, C, H, W); `kernel` and `stride` have 2 entries, `padding` 4, none larger than half
    its side of the kernel; the result is (N, C, Ho, Wo), Ho = floor((H + top + bottom - kh) / sh)
    + 1 (and Wo alike), at least 1."""
    _image(x, "the input")
    _check_geometry(stride, padding)
    if len(kernel) != 2:
        raise ShapeError(f"kernel must have 2 entries, got {tuple(kernel)}")
    if any(p > kernel[a % 2] // 2 for a, p in enumerate(padding)):
        raise ShapeError(f"padding {tuple(padding)} is more than half the kernel {tuple(kernel)}")
    return (*x.shape[:2], *_out_hw(x, kernel, stride, padding))


def _geometry(x: Any, kernel: tuple, stride: tuple, padding: tuple) -> tuple[tuple, tuple, list]:
    """(H, W), (Ho, Wo) and the taps of pooling x."""
    out_hw = _out_hw(Meta(x.shape, x.dtype), kernel, stride, padding)
    return x.shape[2:], out_hw, list(_taps(x.shape[2:], out_hw, kernel, stride, padding))


def _max_of(x: np.ndarray, shape: tuple, taps: list) -> np.ndarray:
    out = np.full(shape, -np.inf, x.dtype)
    for _, _, region, tap in taps:
        np.maximum(out[region], x[tap], out=out[region])
    return out


def _max_pool_kernel(x: np.ndarray, *, kernel: tuple, stride: tuple, padding: tuple) -> np.ndarray:
    _, out_hw, taps = _geometry(x, kernel, stride, padding)
    return _max_of(x, (*x.shape[:2], *out_hw), taps)


def _winners(x: np.ndarray, dtype: np.dtype, kernel: tuple, stride: tuple, padding: tuple) -> tuple:
    """For each tap k, which windows' elements there reach the window's max (`hits[k]`), how
    many elements reach each window's max (ties; as uint8, or int64 for windows of 256 or more
    elements), and the taps."""
    _, out_hw, taps = _geometry(x, kernel, stride, padding)
    shape = (*x.shape[:2], *out_hw)
    m = _max_of(x, shape, taps)
    count = np.zeros(shape, np.uint8 if len(taps) < 256 else np.int64)
    hits = np.zeros((len(taps), *shape), bool)
    for k, (_, _, region, tap) in enumerate(taps):
        np.equal(x[tap], m[region], out=hits[k][region])
        np.add(count[region], hits[k][region].view(np.uint8), out=count[region], casting="unsafe")
    return hits, count, taps


def _scatter_kernel(g: np.ndarray, x: np.ndarray, *, kernel: tuple, stride: tuple, padding: tuple) -> np.ndarray:
    dtype = np.result_type(g, x)
    out = np.zeros(x.shape, dtype)
    hits, count, taps = _winners(x, dtype, kernel, stride, padding)
    share = np.divide(g, count, dtype=dtype)  # each window's cotangent, per element that reaches its max
    if _disjoint(kernel, stride):  # each element in one window at most: write its share in place
        for k, (_, _, region, tap) in enumerate(taps):
            np.multiply(hits[k][region], share[region], out=out[tap])
        return out
    tmp = np.empty_like(share)
    for k, (_, _, region, tap) in enumerate(taps):
        np.multiply(hits[k][region], share[region], out=tmp[region])
        out[tap] += tmp[region]
    return out


def _gather_kernel(t: np.ndarray, x: np.ndarray, *, kernel: tuple, stride: tuple, padding: tuple) -> np.ndarray:
    dtype = np.result_type(t, x)
    out = np.zeros((*x.shape[:2], *_out_hw(Meta(x.shape, x.dtype), kernel, stride, padding)), dtype)
    hits, count, taps = _winners(x, dtype, kernel, stride, padding)
    tmp = np.empty_like(out)
    for k, (_, _, region, tap) in enumerate(taps):
        np.multiply(hits[k][region], t[tap], out=tmp[region])
        out[region] += tmp[region]
    out /= count
    return out


def _disjoint(kernel: tuple, stride: tuple) -> bool:
    """Whether no two windows share an element."""
    return all(s >= k for s, k in zip(stride, kernel, strict=True))


def _winners_scratch(a: Any, x: Any, *, kernel: tuple, stride: tuple, padding: tuple) -> int:
    """Per element of max_pool2d's output: a bool per tap and the tie count (uint8, or int64 for
    windows of 256 or more elements), with first the max (x's dtype), then the share and a
    product (scatter; no product over disjoint windows) or a product (gather), in the result's
    dtype."""
    n = int(np.prod(x.shape[:2])) * int(np.prod(_out_hw(Meta(x.shape, x.dtype), kernel, stride, padding)))
    taps = kernel[0] * kernel[1]
    size = np.result_type(a.dtype, x.dtype).itemsize
    scatter = tuple(a.shape) != tuple(x.shape)  # (a scatter's g has the output's shape, which x's never is)
    later = (size + (0 if _disjoint(kernel, stride) else size)) if scatter else size
    return n * (taps + (1 if taps < 256 else 8) + max(np.dtype(x.dtype).itemsize, later))


def _scatter_shape(g: Meta, x: Meta, **attrs: Any) -> Shape:
    """x's shape; g has max_pool2d's output shape for x (where sizes are known)."""
    want = _pool_shape(x, **attrs)
    if g.ndim != 4:
        raise ShapeError(f"the cotangent must be 4-D, got {g.ndim}-D")
    for a, b in zip(g.shape, want, strict=True):
        _agree(a, b, "the cotangent's shape and max_pool2d's output shape")
    return x.shape


def _gather_shape(t: Meta, x: Meta, **attrs: Any) -> Shape:
    """max_pool2d's output shape for x; t has x's shape (where sizes are known)."""
    if t.ndim != x.ndim:
        raise ShapeError(f"the tangent has {t.ndim} dimensions, the input {x.ndim}")
    for a, b in zip(t.shape, x.shape, strict=True):
        _agree(a, b, "the tangent's shape and the input's")
    return _pool_shape(x, **attrs)


max_pool2d_scatter = define(
    "max_pool2d_scatter", _scatter_kernel, inputs=("g", "x"), shape=_scatter_shape, dtype=FLOAT, attrs=POOL,
    batch=_images_batch("max_pool2d_scatter"),
    pattern=rule("each element depends on the cotangents of the windows that cover it (x has no derivative)",
                 lambda out, g, x, **a: _spread_pattern(g, out, a["kernel"], a["stride"], a["padding"])),
    scratch=_winners_scratch,
    jvp=(lambda t, out, g, x, **a: max_pool2d_scatter(t, x, **a), ZERO),
    vjp=(lambda c, out, g, x, **a: max_pool2d_gather(c, x, **a), ZERO),
    doc="the VJP of max_pool2d: zeros of x's shape, each window's element of g added to the elements of x "
        "that reach the window's max (shared equally among ties)",
    grad_doc="linear in g (JVP: the same op on the tangent; VJP: max_pool2d_gather); zero wrt x")
max_pool2d_gather = define(
    "max_pool2d_gather", _gather_kernel, inputs=("t", "x"), shape=_gather_shape, dtype=FLOAT, attrs=POOL,
    batch=_images_batch("max_pool2d_gather"),
    pattern=rule("each output element depends on its window's elements of t (exact; x has no derivative)",
                 lambda out, t, x, **a: _window_pattern(out, t, **a)),
    scratch=_winners_scratch,
    jvp=(lambda s, out, t, x, **a: max_pool2d_gather(s, x, **a), ZERO),
    vjp=(lambda c, out, t, x, **a: max_pool2d_scatter(c, x, **a), ZERO),
    doc="the JVP of max_pool2d: for each window, the mean of t over the elements of x that reach the "
        "window's max",
    grad_doc="linear in t (JVP: the same op on the tangent; VJP: max_pool2d_scatter); zero wrt x")
_max_pool2d = define(
    "max_pool2d", _max_pool_kernel, inputs=("x",), shape=_pool_shape, dtype=SAME_FLOAT, attrs=POOL,
    batch=_images_batch("max_pool2d"), pattern=_window_pattern,
    jvp=(lambda t, out, x, **a: max_pool2d_gather(t, x, **a),),
    vjp=(lambda g, out, x, **a: max_pool2d_scatter(g, x, **a),),
    doc="the largest element of each kh x kw window of x (N, C, H, W), windows `stride` apart "
        "(torch.nn.functional.max_pool2d; the padding never wins)",
    grad_doc="to the elements that reach their window's max, shared equally among ties "
             "(JVP max_pool2d_gather, VJP max_pool2d_scatter)")


def _divisor(x_hw: tuple, out_hw: tuple, kernel: tuple, stride: tuple, padding: tuple,
             include_pad: bool, dtype: np.dtype) -> Any:
    """What each window's sum is divided by: its size, or the number of its elements inside the
    image (an (Ho, Wo) array)."""
    if include_pad:
        return kernel[0] * kernel[1]
    counts = []
    for a in (0, 1):
        c = np.zeros(out_hw[a], dtype)
        for k in range(kernel[a]):
            lo, hi, _ = _span(x_hw[a], out_hw[a], k, stride[a], 1, padding[a])
            c[lo:hi] += 1
        counts.append(c)
    return np.multiply.outer(*counts)


def _avg_pool_kernel(x: np.ndarray, *, kernel: tuple, stride: tuple, padding: tuple,
                     count_include_pad: bool) -> np.ndarray:
    hw, out_hw, taps = _geometry(x, kernel, stride, padding)
    out = np.zeros((*x.shape[:2], *out_hw), x.dtype)
    for _, _, region, tap in taps:
        out[region] += x[tap]
    out /= _divisor(hw, out_hw, kernel, stride, padding, count_include_pad, x.dtype)
    return out


def _avg_scatter_shape(g: Meta, s: Meta | None = None, *, shape: tuple, **attrs: Any) -> Shape:
    """`shape` (x's); g has avg_pool2d's output shape for it (where sizes are known). The `sizes`
    input, when given, MUST be a 1-D int64 tensor of 4 entries."""
    if s is not None and (s.dtype != np.int64 or s.ndim != 1 or s.shape[0] not in (4, None)):
        raise ShapeError("a run-time shape must be a 1-D int64 tensor of 4 entries")
    _scatter_shape(g, Meta(tuple(shape), g.dtype), **{k: v for k, v in attrs.items() if k != "count_include_pad"})
    return tuple(shape)


def _avg_scatter_kernel(g: np.ndarray, s: np.ndarray | None = None, *, shape: tuple, kernel: tuple, stride: tuple,
                        padding: tuple, count_include_pad: bool) -> np.ndarray:
    shape = tuple(shape if s is None else s.tolist())
    hw, out_hw = shape[2:], g.shape[2:]
    share = g / _divisor(hw, out_hw, kernel, stride, padding, count_include_pad, g.dtype)
    out = np.zeros(shape, g.dtype)
    for _, _, region, tap in _taps(hw, out_hw, kernel, stride, padding):
        out[tap] += share[region]
    return out


def _avg_scratch(x: Any, *, kernel: tuple, stride: tuple, padding: tuple, count_include_pad: bool) -> int:
    """The window counts (an (Ho, Wo) array) when the padding is not counted."""
    if count_include_pad:
        return 0
    return int(np.prod(_out_hw(Meta(x.shape, x.dtype), kernel, stride, padding))) * np.dtype(x.dtype).itemsize


def _avg_scatter_scratch(g: Any, *s: Any, shape: tuple, count_include_pad: bool, **attrs: Any) -> int:
    """The cotangent divided by the window counts, and the counts (see avg_pool2d)."""
    counts = 0 if count_include_pad else int(np.prod(g.shape[2:]))
    return (int(np.prod(g.shape)) + counts) * np.dtype(g.dtype).itemsize


avg_pool2d_scatter = define(
    "avg_pool2d_scatter", _avg_scatter_kernel, inputs=("g", "sizes?"), shape=_avg_scatter_shape, dtype=SAME_FLOAT,
    attrs={"shape": Attr("dims", doc="x's shape (with a `sizes` input: its static sizes, None where known only at "
                                     "run time)"), **AVG},
    shape_arg=True, scratch=_avg_scatter_scratch, batch=_avg_scatter_batch,
    pattern=rule("each element depends on the cotangents of the windows that cover it (exact)",
                 lambda out, g, *s, **a: _spread_pattern(g, out, a["kernel"], a["stride"], a["padding"])),
    jvp=(lambda t, out, g, *s, **a: avg_pool2d_scatter(t, *s, **a), NONDIFF),
    vjp=(lambda c, out, g, *s, shape, **a: _avg_pool2d(c, **a), NONDIFF),
    doc="the VJP of avg_pool2d: zeros of `shape` with each window's element of g, divided as avg_pool2d "
        "divides, added over the window",
    grad_doc="linear in g: JVP the same op on the tangent; VJP avg_pool2d")
_avg_pool2d = define(
    "avg_pool2d", _avg_pool_kernel, inputs=("x",), shape=_pool_shape, dtype=SAME_FLOAT, attrs=AVG,
    scratch=_avg_scratch, batch=_images_batch("avg_pool2d"), pattern=_window_pattern,
    jvp=(lambda t, out, x, **a: _avg_pool2d(t, **a),),
    vjp=(lambda g, out, x, **a: _with_shape("avg_pool2d_scatter", g, shape_like(x), **a),),
    doc="the mean of each kh x kw window of x (N, C, H, W), windows `stride` apart "
        "(torch.nn.functional.avg_pool2d; zero padding, counted in the divisor unless `count_include_pad` is false)",
    grad_doc="linear: JVP avg_pool2d of the tangent; VJP avg_pool2d_scatter")


# ---- the functions users call -------------------------------------------------------------

def _pair(v: Any, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v), int(v))
    try:
        a, b = v
        return (int(a), int(b))
    except (TypeError, ValueError):
        raise ShapeError(f"{what} must be an int or a pair of ints, got {v!r}") from None


def _padding(padding: Any, kernel: tuple, stride: tuple, dilation: tuple) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, a pair (ph, pw), four ints, or "same" (stride 1
    only, as torch: the output keeps the input's size, any odd padding going after)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ShapeError(f"padding must be an int, a pair, four ints, 'same' or 'valid', got {padding!r}")
        if stride != (1, 1):
            raise ShapeError(f"padding='same' needs stride 1 (as torch), got {stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        return tuple(int(p) for p in padding)  # type: ignore[return-value]
    ph, pw = _pair(padding, "padding")
    return (ph, pw, ph, pw)


def conv2d(x: Tensor, w: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """The 2-D convolution of images x (N, C, H, W) with kernels w (Co, C / groups, kh, kw), as
    torch.nn.functional.conv2d (no bias: add one of shape (Co, 1, 1)). `stride` and `dilation`:
    an int or a pair; `padding`: an int, a pair (ph, pw), four ints (top, left, bottom, right),
    "valid" (0) or "same" (stride 1: the output keeps the input's height and width)."""
    from cgraph.ops.registry import graph_of, lift_all

    x, w = lift_all(graph_of("conv2d", (x, w)), (x, w))
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    kernel = tuple(w.shape[2:]) if w.ndim == 4 else (1, 1)
    if isinstance(padding, str) and None in kernel:
        raise ShapeError(f"padding='same' needs the kernel's size known, got {w.shape}")
    pads = _padding(padding, kernel, stride, dilation)
    return _conv2d(x, w, stride=stride, padding=pads, dilation=dilation, groups=int(groups))


def _pool_args(kernel_size: Any, stride: Any, padding: Any) -> dict[str, Any]:
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else _pair(stride, "stride")
    return {"kernel": kernel, "stride": stride, "padding": _padding(padding, kernel, stride, (1, 1))}


def max_pool2d(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Tensor:
    """The max of each window of x (N, C, H, W), as torch.nn.functional.max_pool2d: `stride`
    defaults to the kernel size; `padding` (an int or a pair, at most half the kernel) never wins.
    Ties share the derivative equally."""
    return _max_pool2d(x, **_pool_args(kernel_size, stride, padding))


def avg_pool2d(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               count_include_pad: bool = True) -> Tensor:
    """The mean of each window of x (N, C, H, W), as torch.nn.functional.avg_pool2d: `stride`
    defaults to the kernel size; the zero `padding` counts in the divisor unless
    `count_include_pad` is false."""
    return _avg_pool2d(x, **_pool_args(kernel_size, stride, padding), count_include_pad=bool(count_include_pad))

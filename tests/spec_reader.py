"""A validating reader of cgraph model files, written from proto/cgraph.proto and docs/ops.md alone.

It checks that the two documents are a specification: nothing here comes from cgraph's code (only the
protobuf classes generated from the proto are used). `validate(data)` returns for a valid file and
raises `SpecError` for any other. Where the documents were wrong or left a choice, they were
corrected (and cgraph with them where it disagreed); this reader follows the corrected documents.
"""

from __future__ import annotations

import math
import zlib

from google.protobuf.message import DecodeError

from cgraph._proto import cgraph_pb2 as pb

READER_VERSION = 4  # version 2 adds Model.padding (ignored) and crc32 always present; 3 control flow;
#                    4 the dtypes float16, int32, int16, int8, uint8
FOOTER_SIZE = 30
MAGIC = b"CGPB"


class SpecError(Exception):
    """The file is not a valid cgraph model file."""


class InferenceMismatch(SpecError):
    """A node's stored dtype or shape is not what inference gives (which the error carries)."""

    def __init__(self, msg: str, dtype: str, shape: tuple):
        super().__init__(msg)
        self.dtype, self.shape = dtype, shape


def _fail(msg: str):
    raise SpecError(msg)


# ----------------------------------------------------------------------------------------------
# dtypes

F64, F32, I64, BOOL = "float64", "float32", "int64", "bool"
F16, I32, I16, I8, U8 = "float16", "int32", "int16", "int8", "uint8"  # format version 4
DTYPES = {pb.DATA_TYPE_FLOAT64: F64, pb.DATA_TYPE_FLOAT32: F32, pb.DATA_TYPE_INT64: I64, pb.DATA_TYPE_BOOL: BOOL,
          pb.DATA_TYPE_FLOAT16: F16, pb.DATA_TYPE_INT32: I32, pb.DATA_TYPE_INT16: I16, pb.DATA_TYPE_INT8: I8,
          pb.DATA_TYPE_UINT8: U8}
ITEMSIZE = {F64: 8, F32: 4, I64: 8, BOOL: 1, F16: 2, I32: 4, I16: 2, I8: 1, U8: 1}
FLOATS = (F64, F32, F16)


def _promote_table() -> dict[tuple[str, str], str]:
    """PROMOTE as docs/ops.md's table states it (row dtype, column dtype) -> result."""
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "docs" / "ops.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| | bool |"))
    cols = [c.strip() for c in lines[start].strip("|").split("|")][1:]
    table = {}
    for line in lines[start + 2:]:
        if not line.startswith("| **"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for col, cell in zip(cols, cells[1:], strict=True):
            table[cells[0].strip("*"), col] = cell
    return table


_PROMOTE = _promote_table()


def promote(*dts: str) -> str:
    out = dts[0]
    for d in dts[1:]:
        out = _PROMOTE[(out, d)]
    return out


def _dtype(code: int, what: str) -> str:
    if code not in DTYPES:
        _fail(f"{what}: dtype {code} is not a valid DataType")
    return DTYPES[code]


# ----------------------------------------------------------------------------------------------
# framing


def _u32(b: bytes) -> int:
    return int.from_bytes(b, "little")


def validate(data: bytes) -> None:
    """Return if `data` is a valid cgraph model file, else raise SpecError."""
    data = bytes(data)
    if len(data) < FOOTER_SIZE:
        _fail("file shorter than the 30-byte footer")
    foot = data[-FOOTER_SIZE:]
    if foot[0] != 0x7A or foot[1] != 0x1C or foot[2] != 0x0D or foot[7] != 0x11 or foot[16] != 0x19 \
            or foot[25] != 0x25:
        _fail("footer: bad tag bytes")
    if foot[3:7] != MAGIC:
        _fail("footer: unknown magic")
    m = _u32(foot[8:16])
    p = _u32(foot[17:25])
    crc = _u32(foot[26:30])
    if m + p + FOOTER_SIZE != len(data):
        _fail("footer: message and payload lengths do not add up to the file size")
    msg = data[:m]
    if zlib.crc32(msg) != crc:
        _fail("message CRC-32 mismatch")
    model = pb.Model()
    try:
        model.ParseFromString(msg)
    except (DecodeError, ValueError, RuntimeError) as e:  # malformed protobuf, bad UTF-8
        _fail(f"message does not decode as a Model: {e}")
    if model.HasField("footer"):
        _fail("message section contains a footer")
    payload = data[m:m + p]
    _check_versions(model)
    _check_model(model, payload)


def _check_versions(model) -> None:
    if model.format_version < 1:
        _fail("format_version must be at least 1")
    if model.min_reader_version < 1 or model.min_reader_version > model.format_version:
        _fail("min_reader_version must be in [1, format_version]")
    if model.min_reader_version > READER_VERSION:
        _fail(f"file needs reader version {model.min_reader_version}")


# ----------------------------------------------------------------------------------------------
# tensors


class _Payload:
    """Checks that payload references tile the payload section in message order."""

    def __init__(self, payload: bytes):
        self.data = payload
        self.pos = 0

    def take(self, ref, what: str) -> bytes:
        if ref.offset != self.pos:
            _fail(f"{what}: payload reference at {ref.offset}, expected {self.pos} (tiling)")
        if ref.offset + ref.length > len(self.data):
            _fail(f"{what}: payload reference past the payload's end")
        chunk = self.data[ref.offset:ref.offset + ref.length]
        self.pos = ref.offset + ref.length
        if zlib.crc32(chunk) != ref.crc32:
            _fail(f"{what}: payload CRC-32 mismatch")
        return chunk

    def finish(self) -> None:
        if self.pos != len(self.data):
            _fail("payload bytes not covered by any tensor")


def _check_tensor(t, what: str, pay: _Payload) -> tuple[str, tuple[int, ...]]:
    if t.dtype == pb.DATA_TYPE_UNSPECIFIED:
        _fail(f"{what}: tensor dtype unspecified")
    dt = _dtype(t.dtype, what)
    dims = tuple(t.dims)
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow
    nbytes = count * ITEMSIZE[dt]
    kind = t.WhichOneof("data")
    if kind is None:
        _fail(f"{what}: tensor has no data")
    if kind == "raw_data":
        raw = t.raw_data
        if len(raw) != nbytes:
            _fail(f"{what}: raw_data has {len(raw)} bytes, dims and dtype need {nbytes}")
    else:
        if t.payload.length != nbytes:
            _fail(f"{what}: payload length {t.payload.length}, dims and dtype need {nbytes}")
        raw = pay.take(t.payload, what)
    if dt == BOOL and raw.translate(None, b"\x00\x01"):
        _fail(f"{what}: bool tensor with a byte other than 0 or 1")
    return dt, dims


# ----------------------------------------------------------------------------------------------
# shapes


def _shape(s, what: str) -> tuple:
    out = []
    for d in s.dim:
        k = d.WhichOneof("kind")
        if k is None:
            _fail(f"{what}: shape entry with neither value nor none")
        if k == "none":
            if not d.none:
                _fail(f"{what}: shape entry none=false")
            out.append(None)
        else:
            if d.value < 0:
                _fail(f"{what}: negative size {d.value}")
            out.append(d.value)
    return tuple(out)


def broadcast(*shapes, what: str) -> tuple:
    n = max(len(s) for s in shapes)
    padded = [(1,) * (n - len(s)) + tuple(s) for s in shapes]
    out = []
    for sizes in zip(*padded):
        known = {s for s in sizes if s is not None and s != 1}
        if len(known) > 1:
            _fail(f"{what}: shapes {shapes} do not broadcast")
        if known:
            out.append(known.pop())
        elif any(s is None for s in sizes):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def _axis(a: int, n: int, what: str) -> int:
    if not -n <= a < n:
        _fail(f"{what}: axis {a} out of range for {n} dimensions")
    return a + n if a < 0 else a


def _axes(axes, n: int, what: str) -> list[int]:
    out = [_axis(a, n, what) for a in axes]
    if len(set(out)) != len(out):
        _fail(f"{what}: repeated axis in {axes}")
    return out


def reduce_shape(shape, axes, keepdims, what):
    red = set(_axes(axes, len(shape), what))
    if keepdims:
        return tuple(1 if i in red else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in red)


def _slice_len_known(sl, n: int) -> int:
    start, stop, step = slice(*sl).indices(n)  # Python's slice length, without len()'s size limit
    if step > 0:
        return max(0, (stop - start + step - 1) // step)
    return max(0, (start - stop - step - 1) // -step)


def _slice_len_unknown(sl):
    start, stop, step = sl
    step = 1 if step is None else step
    if step > 0:
        start_end = start is not None and start < 0
        stop_end = stop is None or stop < 0
    else:
        start_end = start is None or start < 0
        stop_end = stop is not None and stop < 0
    if start_end == stop_end:
        n = max(abs(start or 0), abs(stop or 0)) + 1
        return _slice_len_known(sl, n)
    upper_end = stop_end if step > 0 else start_end
    return None if upper_end else 0  # only the upper end from the end: grows with n


ELLIPSIS = "..."
NEWAXIS = "newaxis"


def getitem_shape(shape, index, what):
    n_real = sum(1 for e in index if isinstance(e, (int, tuple)))
    n_ell = sum(1 for e in index if e is ELLIPSIS)
    if n_ell > 1:
        _fail(f"{what}: more than one Ellipsis")
    if n_real > len(shape):
        _fail(f"{what}: too many indices ({n_real}) for {len(shape)} dimensions")
    items = []
    for e in index:
        if e is ELLIPSIS:
            items.extend([(None, None, None)] * (len(shape) - n_real))
        else:
            items.append(e)
    out = []
    ax = 0
    for e in items:
        if e is NEWAXIS:
            out.append(1)
            continue
        n = shape[ax]
        ax += 1
        if isinstance(e, int):
            if n is not None and not -n <= e < n:
                _fail(f"{what}: index {e} out of range for size {n}")
        else:
            out.append(_slice_len_unknown(e) if n is None else _slice_len_known(e, n))
    out.extend(shape[ax:])
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# attributes

INT, FLOAT, BOOLT, STR, INTS, DIMS, INDEX, GRAPH = "int", "float", "bool", "str", "ints", "dims", "index", "graph"
TUPLE = "tuple"  # the dtype of a control-flow node (DATA_TYPE_TUPLE, format version 2)
_REQ = object()


def _attr_value(v, typ: str, what: str, pay=None):
    field = v.WhichOneof("value")
    if field is None:
        _fail(f"{what}: attribute value not set")
    if typ == GRAPH:
        if field != "graph":
            _fail(f"{what}: expected a graph (graph), got {field}")
        _check_graph(v.graph, pay, f"{what}: ", body=True)
        return v.graph
    if typ == INT:
        if field != "i":
            _fail(f"{what}: expected an int (i), got {field}")
        return v.i
    if typ == FLOAT:
        if field != "f":
            _fail(f"{what}: expected a float (f), got {field}")
        return v.f
    if typ == BOOLT:
        if field != "b":
            _fail(f"{what}: expected a bool (b), got {field}")
        return v.b
    if typ == STR:
        if field != "s":
            _fail(f"{what}: expected a str (s), got {field}")
        return v.s
    if typ in (INTS, DIMS):
        if field != "ints":
            _fail(f"{what}: expected a tuple (ints), got {field}")
        out = []
        for it in v.ints.item:
            k = it.WhichOneof("kind")
            if k == "value":
                out.append(it.value)
            elif k == "none" and typ == DIMS:
                if not it.none:
                    _fail(f"{what}: none=false")
                out.append(None)
            else:
                _fail(f"{what}: tuple item must be an integer{' or None' if typ == DIMS else ''}")
        return tuple(out)
    assert typ == INDEX
    if field == "ints":
        out = []
        for it in v.ints.item:
            k = it.WhichOneof("kind")
            if k == "value":
                out.append(it.value)
            elif k == "none":
                if not it.none:
                    _fail(f"{what}: none=false")
                out.append(NEWAXIS)
            else:
                _fail(f"{what}: index item unset")
        return tuple(out)
    if field != "index":
        _fail(f"{what}: expected an index (index or ints), got {field}")
    out = []
    for it in v.index.item:
        k = it.WhichOneof("kind")
        if k == "at":
            out.append(it.at)
        elif k == "slice":
            s = it.slice
            sl = tuple(getattr(s, f) if s.HasField(f) else None for f in ("start", "stop", "step"))
            if sl[2] == 0:
                _fail(f"{what}: slice step 0")
            out.append(sl)
        elif k == "new_axis":
            if not it.new_axis:
                _fail(f"{what}: new_axis=false")
            out.append(NEWAXIS)
        elif k == "ellipsis":
            if not it.ellipsis:
                _fail(f"{what}: ellipsis=false")
            out.append(ELLIPSIS)
        else:
            _fail(f"{what}: index item unset")
    if sum(1 for e in out if e is ELLIPSIS) > 1:
        _fail(f"{what}: more than one Ellipsis")
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# the op catalogue: (min inputs, max inputs or None), attributes {name: (type, default)}, rule

def _same(ins, at, w):
    return ins[0][1]


def _bcast(ins, at, w):
    return broadcast(*[x[1] for x in ins], what=w)


def _d_promote(ins):
    return promote(*[x[0] for x in ins])


def _d_first(ins):
    return ins[0][0]


def _not_bool(dt, w):
    if dt == BOOL:
        _fail(f"{w}: dtype must not be bool")
    return dt


def _float(dt, w):
    if dt not in FLOATS:
        _fail(f"{w}: dtype {dt} must be float64 or float32")
    return dt


def d_promote_any(ins, at, w):
    return _d_promote(ins)


def d_promote_nb(ins, at, w):
    return _not_bool(_d_promote(ins), w)


def d_promote_f(ins, at, w):
    return _float(_d_promote(ins), w)


def d_first(ins, at, w):
    return _d_first(ins)


def d_first_f(ins, at, w):
    return _float(_d_first(ins), w)


def d_first_nb(ins, at, w):
    return _not_bool(_d_first(ins), w)


def d_bool(ins, at, w):
    return BOOL


def d_cast(ins, at, w):
    return at["dtype"]


def d_mean(ins, at, w):
    return ins[0][0] if ins[0][0] in FLOATS else F64


def d_nll(ins, at, w):
    _float(ins[0][0], w)
    if ins[1][0] == BOOL:
        _fail(f"{w}: y must not be bool")
    return ins[0][0]


def d_where(ins, at, w):
    if ins[0][0] != BOOL:
        _fail(f"{w}: condition must be bool")
    return promote(ins[1][0], ins[2][0])


def d_int64(ins, at, w):
    return I64


def _check_sizes(ins, at, w):
    if len(ins) == 2:
        dt, s = ins[1][:2]
        if dt != I64 or len(s) != 1:
            _fail(f"{w}: sizes must be a 1-D int64 tensor")
        if s[0] is not None and s[0] != len(at["shape"]):
            _fail(f"{w}: sizes has {s[0]} entries, shape {len(at['shape'])}")
        if any(v is not None and v < 0 for v in at["shape"]):
            _fail(f"{w}: negative size in shape {at['shape']}")
        return True
    return False


def _static_target(shape, w):
    if any(s is None or s < 0 for s in shape):
        _fail(f"{w}: shape {shape} has a None or negative size")


def s_broadcast_to(ins, at, w):
    shape = at["shape"]
    x = ins[0][1]
    if len(shape) < len(x):
        _fail(f"{w}: shape {shape} has fewer dimensions than x {x}")
    b = broadcast(x, shape, what=w)
    if not _check_sizes(ins, at, w):
        _static_target(shape, w)
        if b != tuple(shape):
            _fail(f"{w}: x {x} does not broadcast to {shape}")
    return tuple(shape)


def s_concat(ins, at, w):
    shapes = [x[1] for x in ins]
    n = len(shapes[0])
    if any(len(s) != n for s in shapes):
        _fail(f"{w}: inputs of different ranks {shapes}")
    ax = _axis(at["axis"], n, w)
    out = []
    for i in range(n):
        col = [s[i] for s in shapes]
        if i == ax:
            out.append(None if any(c is None for c in col) else sum(col))
        else:
            known = {c for c in col if c is not None}
            if len(known) > 1:
                _fail(f"{w}: sizes along axis {i} disagree: {col}")
            out.append(known.pop() if known else None)
    return tuple(out)


def s_dim_size(ins, at, w):
    _axes(at["axes"], len(ins[0][1]), w)
    return ()


def s_expand_dims(ins, at, w):
    x = ins[0][1]
    k = len(at["axes"])
    n = len(x) + k
    pos = set(_axes(at["axes"], n, w))
    it = iter(x)
    return tuple(1 if i in pos else next(it) for i in range(n))


def s_getitem(ins, at, w):
    return getitem_shape(ins[0][1], at["index"], w)


def s_axes_same(ins, at, w):
    _axes(at["axes"], len(ins[0][1]), w)
    return ins[0][1]


def s_reduce(ins, at, w):
    return reduce_shape(ins[0][1], at["axes"], at["keepdims"], w)


def s_matmul(ins, at, w):
    a, b = ins[0][1], ins[1][1]
    if len(a) < 2 or len(b) < 2:
        _fail(f"{w}: matmul needs at least 2 dimensions: {a}, {b}")
    if a[-1] is not None and b[-2] is not None and a[-1] != b[-2]:
        _fail(f"{w}: inner sizes disagree: {a}, {b}")
    batch = broadcast(a[:-2], b[:-2], what=w)
    return batch + (a[-2], b[-1])


def s_nll(ins, at, w):
    lp, y = ins[0][1], ins[1][1]
    if len(lp) < 2 or len(y) != len(lp):
        _fail(f"{w}: nll shapes {lp}, {y}")
    for p, q in zip(lp, y):
        if p is not None and q is not None and p != q:
            _fail(f"{w}: nll shapes {lp}, {y} disagree")
    return ()


def s_reshape(ins, at, w):
    shape = tuple(at["shape"])
    x = ins[0][1]
    if _check_sizes(ins, at, w):
        if None not in shape and None not in x and math.prod(shape) != math.prod(x):
            _fail(f"{w}: {x} cannot reshape to {shape}")
        return shape
    if any(s is None or s < -1 for s in shape) or shape.count(-1) > 1:
        _fail(f"{w}: bad reshape target {shape}")
    K = 1
    for s in x:
        if s is not None:
            K *= s
    k = 1
    for s in shape:
        if s != -1:
            k *= s
    unknown = any(s is None for s in x)
    if -1 in shape:
        if k == 0:
            _fail(f"{w}: -1 with a zero-size target {shape}")
        if not unknown:
            if K % k:
                _fail(f"{w}: {x} cannot reshape to {shape}")
            fill = K // k
        else:
            fill = 0 if K == 0 else None
        return tuple(fill if s == -1 else s for s in shape)
    if not unknown:
        if k != K:
            _fail(f"{w}: {x} cannot reshape to {shape}")
    else:
        if K == 0:
            if k != 0:
                _fail(f"{w}: {x} cannot reshape to {shape}")
        elif k % K:
            _fail(f"{w}: {x} cannot reshape to {shape}")
    return shape


def s_scatter(ins, at, w):
    shape = tuple(at["shape"])
    if not _check_sizes(ins, at, w):
        _static_target(shape, w)
    want = getitem_shape(shape, at["index"], w)
    g = ins[0][1]
    if len(g) != len(want) or any(a is not None and b is not None and a != b for a, b in zip(g, want)):
        _fail(f"{w}: g's shape {g} is not {want}, the shape of shape[index]")
    return shape


def s_shape_of(ins, at, w):
    return (len(ins[0][1]),)


def s_squeeze(ins, at, w):
    x = ins[0][1]
    ax = set(_axes(at["axes"], len(x), w))
    for a in ax:
        if x[a] is not None and x[a] != 1:
            _fail(f"{w}: cannot squeeze axis {a} of size {x[a]}")
    return tuple(s for i, s in enumerate(x) if i not in ax)


def s_sum_to(ins, at, w):
    shape = tuple(at["shape"])
    x = ins[0][1]
    if any(s is not None and s < 0 for s in shape):
        _fail(f"{w}: negative size in shape {shape}")
    if len(shape) > len(x):
        _fail(f"{w}: shape {shape} has more dimensions than x {x}")
    xs = x[len(x) - len(shape):]
    for s, xv in zip(shape, xs):
        if s is not None and s != 1 and xv is not None and s != xv:
            _fail(f"{w}: cannot sum {x} to {shape}")
    if _check_sizes(ins, at, w):
        return shape
    return tuple(xv if s is None else s for s, xv in zip(shape, xs))


def s_transpose(ins, at, w):
    x = ins[0][1]
    axes = at["axes"]
    if sorted(axes) != list(range(len(x))):
        _fail(f"{w}: {axes} is not a permutation of 0..{len(x) - 1}")
    return tuple(x[a] for a in axes)


def s_bcast3(ins, at, w):
    return broadcast(*[x[1] for x in ins], what=w)


AXES = {"axes": (INTS, _REQ)}
RED = {"axes": (INTS, _REQ), "keepdims": (BOOLT, False)}
SHAPE = {"shape": (DIMS, _REQ)}

OPS: dict[str, tuple] = {}


def _op(names, arity, attrs, dtype, shape):
    for n in names.split():
        OPS[n] = (arity, attrs, dtype, shape)


_op("abs neg relu sign square", (1, 1), {}, d_promote_nb, _same)
_op("cos exp log logistic sin softplus sqrt tanh", (1, 1), {}, d_promote_f, _same)
_op("add matmul mul sub", (2, 2), {}, d_promote_nb, _bcast)
OPS["matmul"] = ((2, 2), {}, d_promote_nb, s_matmul)
_op("div pow", (2, 2), {}, d_promote_f, _bcast)
_op("maximum minimum", (2, 2), {}, d_promote_any, _bcast)
_op("equal greater greater_equal less less_equal", (2, 2), {}, d_bool, _bcast)
_op("broadcast_to", (1, 2), SHAPE, d_first, s_broadcast_to)
_op("cast", (1, 1), {"dtype": (STR, _REQ)}, d_cast, _same)
_op("concat", (1, None), {"axis": (INT, _REQ)}, d_promote_any, s_concat)
_op("dim_size", (1, 1), AXES, d_first, s_dim_size)
_op("expand_dims", (1, 1), AXES, d_first, s_expand_dims)
_op("getitem", (1, 1), {"index": (INDEX, _REQ)}, d_first, s_getitem)
_op("log_softmax softmax", (1, 1), AXES, d_first_f, s_axes_same)
_op("logsumexp", (1, 1), RED, d_first_f, s_reduce)
_op("max", (1, 1), RED, d_first, s_reduce)
_op("mean", (1, 1), RED, d_mean, s_reduce)
_op("sum", (1, 1), RED, d_first_nb, s_reduce)
_op("nll", (2, 2), {}, d_nll, s_nll)
_op("reshape", (1, 2), SHAPE, d_first, s_reshape)
_op("scatter", (1, 2), {"shape": (DIMS, _REQ), "index": (INDEX, _REQ)}, d_first, s_scatter)
_op("shape_of", (1, 1), {}, d_int64, s_shape_of)
_op("squeeze", (1, 1), AXES, d_first, s_squeeze)
_op("stop_gradient", (1, 1), {}, d_first, _same)
_op("sum_to", (1, 2), SHAPE, d_first_nb, s_sum_to)
_op("transpose", (1, 1), AXES, d_first, s_transpose)
_op("where", (3, 3), {}, d_where, s_bcast3)

# the image ops and the others of the second op set (docs/ops.md)

def _known_eq(a, b) -> bool:
    return a is None or b is None or a == b


def _ints_of(at, name, n, low, w):
    v = at[name]
    if len(v) != n:
        _fail(f"{w}: {name} {v} must have {n} entries")
    if any(e < low for e in v):
        _fail(f"{w}: {name} {v} has an entry below {low}")
    return v


def _image(x, what, w):
    if len(x) != 4:
        _fail(f"{w}: {what} {x} is not 4-D")
    return x


def _window_out(size, lo, hi, k, stride, dil=1):
    """A conv's or a pool's output size along one side (None when not known)."""
    if size is None or k is None:
        return None
    return (size + lo + hi - dil * (k - 1) - 1) // stride + 1


def _at_least_1(sizes, w):
    if any(s is not None and s < 1 for s in sizes):
        _fail(f"{w}: output size {sizes} below 1")
    return sizes


def _conv_attrs(at, w):
    st = _ints_of(at, "stride", 2, 1, w)
    pad = _ints_of(at, "padding", 4, 0, w)
    dil = _ints_of(at, "dilation", 2, 1, w)
    return st, pad, dil, at["groups"]


def _conv_out(hw, khw, st, pad, dil, w):
    return _at_least_1(tuple(_window_out(hw[i], pad[i], pad[i + 2], khw[i], st[i], dil[i]) for i in (0, 1)), w)


def _multiple(c, groups):
    return c is None or c % groups == 0


def s_conv2d(ins, at, w):
    x, k = _image(ins[0][1], "x", w), _image(ins[1][1], "w", w)
    st, pad, dil, groups = _conv_attrs(at, w)
    if not _multiple(k[0], groups):
        _fail(f"{w}: {k[0]} output channels are not a multiple of groups {groups}")
    if not _multiple(x[1], groups) or not _known_eq(None if x[1] is None else x[1] // groups, k[1]):
        _fail(f"{w}: x {x} and w {k} do not agree on the channels for groups {groups}")
    return (x[0], k[0], *_conv_out(x[2:], k[2:], st, pad, dil, w))


def s_conv2d_transpose(ins, at, w):
    g, k = _image(ins[0][1], "g", w), _image(ins[1][1], "w", w)
    st, pad, dil, groups = _conv_attrs(at, w)
    size = _ints_of(at, "size", 2, 0, w)
    if not _known_eq(g[1], k[0]):
        _fail(f"{w}: g {g} and w {k} disagree on the output channels")
    if not all(_known_eq(a, b) for a, b in zip(_conv_out(size, k[2:], st, pad, dil, w), g[2:])):
        _fail(f"{w}: g {g} is not conv2d's output for an input of size {size}")
    return (g[0], None if k[1] is None else k[1] * groups, *size)


def s_conv2d_filter_grad(ins, at, w):
    x, g = _image(ins[0][1], "x", w), _image(ins[1][1], "g", w)
    st, pad, dil, groups = _conv_attrs(at, w)
    kernel = _ints_of(at, "kernel", 2, 1, w)
    if not _multiple(x[1], groups) or not _multiple(g[1], groups):
        _fail(f"{w}: x {x} and g {g} have channels that are not multiples of groups {groups}")
    if not all(_known_eq(a, b) for a, b in zip(_conv_out(x[2:], kernel, st, pad, dil, w), g[2:])):
        _fail(f"{w}: g {g} is not conv2d's output for x {x}")
    return (g[1], None if x[1] is None else x[1] // groups, *kernel)


def _pool_out(x, at, w):
    kernel = _ints_of(at, "kernel", 2, 1, w)
    st = _ints_of(at, "stride", 2, 1, w)
    pad = _ints_of(at, "padding", 4, 0, w)
    if any(pad[i] > kernel[i % 2] // 2 for i in range(4)):
        _fail(f"{w}: padding {pad} larger than half the kernel {kernel}")
    return (x[0], x[1], *_conv_out(x[2:], kernel, st, pad, (1, 1), w))


def s_pool(ins, at, w):
    return _pool_out(_image(ins[0][1], "x", w), at, w)


def _agrees(a, b) -> bool:
    return len(a) == len(b) and all(_known_eq(p, q) for p, q in zip(a, b))


def s_pool_gather(ins, at, w):
    t, x = ins[0][1], _image(ins[1][1], "x", w)
    if not _agrees(t, x):
        _fail(f"{w}: t {t} does not have x's shape {x}")
    return _pool_out(x, at, w)


def s_pool_scatter(ins, at, w):
    g, x = ins[0][1], _image(ins[1][1], "x", w)
    if not _agrees(g, _pool_out(x, at, w)):
        _fail(f"{w}: g {g} is not max_pool2d's output shape for x {x}")
    return x


def s_avg_scatter(ins, at, w):
    if len(ins) == 2:
        dt, sz = ins[1][:2]
        if dt != I64 or len(sz) != 1 or not _known_eq(sz[0], 4):
            _fail(f"{w}: sizes must be a 1-D int64 tensor of 4 entries")
    shape = _image(tuple(at["shape"]), "shape", w)
    if any(v is not None and v < 0 for v in shape):
        _fail(f"{w}: negative size in shape {shape}")
    if len(ins) == 1 and None in shape:
        _fail(f"{w}: shape {shape} has unknown sizes and no sizes input")
    if not _agrees(ins[0][1], _pool_out(shape, at, w)):
        _fail(f"{w}: g {ins[0][1]} is not avg_pool2d's output shape for {shape}")
    return shape


def _int_indices(dt, w):
    if dt != I64:
        _fail(f"{w}: indices must be int64, not {dt}")


def d_take(ins, at, w):
    _int_indices(ins[1][0], w)
    return ins[0][0]


def s_take(ins, at, w):
    a, idx = ins[0][1], ins[1][1]
    if not a:
        _fail(f"{w}: take from a scalar")
    ax = _axis(at["axis"], len(a), w)
    return (*a[:ax], *idx, *a[ax + 1:])


def s_scatter_add(ins, at, w):
    g, idx = ins[0][1], ins[1][1]
    ax, k = at["axis"], len(idx)
    if ax > len(g) - k:
        _fail(f"{w}: indices {idx} do not fit g {g} at axis {ax}")
    if not _agrees(g[ax:ax + k], idx):
        _fail(f"{w}: g {g} does not have the indices' shape {idx} at axis {ax}")
    return (*g[:ax], at["size"], *g[ax + k:])


def d_one_hot(ins, at, w):
    _int_indices(ins[0][0], w)
    if at["dtype"] not in CAST_DTYPES:
        _fail(f"{w}: dtype {at['dtype']!r}")
    return at["dtype"]


def s_one_hot(ins, at, w):
    return (*ins[0][1], at["depth"])


def s_argmax(ins, at, w):
    return reduce_shape(ins[0][1], (at["axis"],), at["keepdims"], w)


def s_cumsum(ins, at, w):
    x = ins[0][1]
    if not x:
        _fail(f"{w}: cumsum of a scalar")
    _axis(at["axis"], len(x), w)
    return x


def d_dropout(ins, at, w):
    if ins[1][0] != I64:
        _fail(f"{w}: the seed must be int64")
    return _float(ins[0][0], w)


def s_dropout(ins, at, w):
    x, seed = ins[0][1], ins[1][1]
    if not (seed == () or (len(seed) == 1 and x and _known_eq(seed[0], x[0]))):
        _fail(f"{w}: seed {seed} is neither a scalar nor a seed per row of x {x}")
    if not 0 <= at["rate"] < 1:
        _fail(f"{w}: rate {at['rate']} not in [0, 1)")
    return x


CONV = {"stride": (INTS, (1, 1)), "padding": (INTS, (0, 0, 0, 0)), "dilation": (INTS, (1, 1)), "groups": (INT, 1)}
POOL = {"kernel": (INTS, _REQ), "stride": (INTS, (1, 1)), "padding": (INTS, (0, 0, 0, 0))}
_op("atan erf expm1 log1p", (1, 1), {}, d_promote_f, _same)
_op("atan2", (2, 2), {}, d_promote_f, _bcast)
_op("ceil floor round", (1, 1), {}, d_promote_nb, _same)
_op("mod", (2, 2), {"fmod": (BOOLT, False)}, d_promote_nb, _bcast)
_op("clip", (3, 3), {}, d_promote_nb, s_bcast3)
_op("min", (1, 1), RED, d_first, s_reduce)
_op("prod", (1, 1), RED, d_first_nb, s_reduce)
_op("argmax", (1, 1), {"axis": (INT, _REQ), "keepdims": (BOOLT, False)}, d_int64, s_argmax)
_op("cumsum", (1, 1), {"axis": (INT, _REQ), "reverse": (BOOLT, False)}, d_first_nb, s_cumsum)
_op("dropout", (2, 2), {"rate": (FLOAT, _REQ)}, d_dropout, s_dropout)
_op("one_hot", (1, 1), {"depth": (INT, _REQ), "dtype": (STR, F64)}, d_one_hot, s_one_hot)
_op("take", (2, 2), {"axis": (INT, _REQ)}, d_take, s_take)
_op("scatter_add", (2, 2), {"axis": (INT, _REQ), "size": (INT, _REQ)}, d_take, s_scatter_add)
_op("conv2d", (2, 2), CONV, d_promote_f, s_conv2d)
_op("conv2d_transpose", (2, 2), {**CONV, "size": (INTS, _REQ)}, d_promote_f, s_conv2d_transpose)
_op("conv2d_filter_grad", (2, 2), {**CONV, "kernel": (INTS, _REQ)}, d_promote_f, s_conv2d_filter_grad)
_op("max_pool2d", (1, 1), POOL, d_first_f, s_pool)
_op("avg_pool2d", (1, 1), {**POOL, "count_include_pad": (BOOLT, True)}, d_first_f, s_pool)
_op("max_pool2d_gather", (2, 2), POOL, d_promote_f, s_pool_gather)
_op("max_pool2d_scatter", (2, 2), POOL, d_promote_f, s_pool_scatter)
_op("avg_pool2d_scatter", (1, 2), {"shape": (DIMS, _REQ), **POOL, "count_include_pad": (BOOLT, True)},
    d_first_f, s_avg_scatter)


def _compatible(m, decl) -> bool:
    (dt, shape), (ddt, dshape) = m[:2], decl[:2]
    return dt == ddt and len(shape) == len(dshape) and all(a is None or b is None or a == b
                                                            for a, b in zip(shape, dshape))


def _reinfer(body, metas, w):
    """The body's outputs (dtype, shape, parts) when its inputs have `metas`."""
    inputs = [n for n in body.node if n.op == "input"]
    if len(inputs) != len(metas):
        _fail(f"{w}: the body takes {len(inputs)} inputs, the node gives {len(metas)}")
    given = {}
    for n, m in zip(inputs, metas):
        decl = (DTYPES[n.dtype], _shape(n.shape, w))
        if not _compatible(m, decl):
            _fail(f"{w}: body input {n.name!r} is {decl}, the node gives {m[:2]}")
        given[n.name] = (m[0], tuple(a if a is not None else b for a, b in zip(m[1], decl[1])), None)
    known = _infer(body, given, w)
    return [known[o.node] for o in body.output]


def _infer(g, given, w):
    """(dtype, shape, parts) of every node of `g` (already checked) with the inputs `given`."""
    known = {}
    for node in g.node:
        if node.op in LEAVES:
            known[node.name] = given.get(node.name) or (DTYPES[node.dtype], _shape(node.shape, w), None)
            continue
        _, decl, drule, srule = OPS[node.op]
        attrs = {a.name: (a.value.graph if decl[a.name][0] == GRAPH else _attr_value(a.value, decl[a.name][0], w))
                 for a in node.attr}
        for name, (_, default) in decl.items():
            attrs.setdefault(name, default)
        ins = [known[i] for i in node.input]
        dt = drule(ins, attrs, w)
        known[node.name] = (dt, tuple(srule(ins, attrs, w)), _PARTS.pop(id(attrs), None))
    return known


_PARTS: dict[int, list] = {}  # a control-flow rule's results, by the id of the attrs it saw


def _results(attrs, parts):
    _PARTS[id(attrs)] = parts
    return (len(parts),)


def d_tuple(ins, at, w):
    return TUPLE


def s_result(ins, at, w):
    dt, shape, parts = ins[0]
    if dt != TUPLE or not 0 <= at["index"] < len(parts):
        _fail(f"{w}: result {at['index']} of {dt}")
    return parts[at["index"]][1]


def d_result(ins, at, w):
    dt, shape, parts = ins[0]
    if dt != TUPLE or not 0 <= at["index"] < len(parts):
        _fail(f"{w}: result {at['index']} of {dt}")
    return parts[at["index"]][0]


def _same_meta(a, b) -> bool:
    return a[0] == b[0] and tuple(a[1]) == tuple(b[1])


def _steps(slices, length, w):
    """The number of steps: the slices' first sizes and `length` (when >= 0) agree."""
    sizes = set()
    for x in slices:
        if not x[1]:
            _fail(f"{w}: a scalar slice")
        if x[1][0] is not None:
            sizes.add(x[1][0])
    if length >= 0:
        sizes.add(length)
    elif not slices:
        _fail(f"{w}: no slices and no length")
    if len(sizes) > 1:
        _fail(f"{w}: lengths disagree")
    return sizes.pop() if sizes else None


def s_scan(ins, at, w):
    c, m = at["carries"], at["slices"]
    if c + m > len(ins):
        _fail(f"{w}: too few inputs")
    n = _steps(ins[c:c + m], at["length"], w)
    inner = [*ins[:c], *((x[0], x[1][1:], None) for x in ins[c:c + m]), *ins[c + m:]]
    outs = _reinfer(at["body"], inner, w)
    if len(outs) < c or not all(_same_meta(o, i) for o, i in zip(outs[:c], ins[:c])):
        _fail(f"{w}: the body changes a carry")
    s = at["checkpoints"]
    return _results(at, [*outs[:c], *((y[0], (n, *y[1]), y[2]) for y in outs[c:]),
                         *((x[0], (s, *x[1]), None) for x in (ins[:c] if s else ()))])


def s_revolve(ins, at, w):
    c, m, L, Y = at["carries"], at["slices"], at["cotangents"], at["ys"]
    k = sum(1 for n in at["advance"].node if n.op == "input") - c - m
    if 2 * c + m + k + L + Y > len(ins):
        _fail(f"{w}: too few inputs")
    n = _steps(ins[2 * c:2 * c + m], at["length"], w)
    for x, ck in zip(ins[:c], ins[c:2 * c]):
        if ck[0] != x[0] or tuple(ck[1]) != (at["snapshots"], *x[1]):
            _fail(f"{w}: snapshots do not fit a carry")
    inner = [*ins[:c], *((x[0], x[1][1:], None) for x in ins[2 * c:2 * c + m])]
    rest = ins[2 * c + m:]
    outs = _reinfer(at["advance"], [*inner, *rest[:k]], w)
    if len(outs) < c or not all(_same_meta(o, i) for o, i in zip(outs[:c], ins[:c])):
        _fail(f"{w}: advance changes a carry")
    adj = [*inner, *rest[:k + L], *((y[0], y[1][1:], None) for y in rest[k + L:k + L + Y]), *rest[k + L + Y:]]
    got = _reinfer(at["adjoint"], adj, w)
    acc = len(rest) - k - L - Y
    return _results(at, [*got[:L + acc], *((g[0], (n, *g[1]), g[2]) for g in got[L + acc:])])


def s_cond(ins, at, w):
    if ins[0][0] != BOOL or ins[0][1] != ():
        _fail(f"{w}: pred is not a bool scalar")
    a = _reinfer(at["then_branch"], ins[1:], w)
    b = _reinfer(at["else_branch"], ins[1:], w)
    if len(a) != len(b) or not all(_same_meta(x, y) for x, y in zip(a, b)):
        _fail(f"{w}: the branches disagree")
    return _results(at, a)


def s_while(ins, at, w):
    c = at["carries"]
    if c > len(ins):
        _fail(f"{w}: too few inputs")
    p = _reinfer(at["cond"], ins, w)
    if len(p) != 1 or p[0][0] != BOOL or tuple(p[0][1]) != ():
        _fail(f"{w}: cond does not give a bool scalar")
    outs = _reinfer(at["body"], ins, w)
    if len(outs) != c or not all(_same_meta(o, i) for o, i in zip(outs, ins)):
        _fail(f"{w}: the body changes a carry")
    return _results(at, outs)


_op("result", (1, 1), {"index": (INT, _REQ)}, d_result, s_result)
_op("cond", (1, None), {"then_branch": (GRAPH, _REQ), "else_branch": (GRAPH, _REQ)}, d_tuple, s_cond)
_op("scan", (0, None), {"body": (GRAPH, _REQ), "carries": (INT, _REQ), "slices": (INT, _REQ), "length": (INT, -1),
                        "reverse": (BOOLT, False), "checkpoints": (INT, 0)}, d_tuple, s_scan)
_op("scan_revolve", (0, None), {"advance": (GRAPH, _REQ), "adjoint": (GRAPH, _REQ), "carries": (INT, _REQ),
                                "slices": (INT, _REQ), "cotangents": (INT, _REQ), "ys": (INT, _REQ),
                                "snapshots": (INT, _REQ), "length": (INT, -1), "reverse": (BOOLT, False)},
    d_tuple, s_revolve)
_op("while_loop", (0, None), {"cond": (GRAPH, _REQ), "body": (GRAPH, _REQ), "carries": (INT, _REQ),
                              "max_trips": (INT, -1)}, d_tuple, s_while)
# ops that need bodies: checked on the test graphs' files, not on random ones
CONTROL = ("cond", "result", "scan", "scan_revolve", "while_loop")
MINIMUM = {("result", "index"): 0, ("scan", "carries"): 0, ("scan", "slices"): 0, ("scan", "length"): -1,
           ("while_loop", "carries"): 0, ("while_loop", "max_trips"): -1,
           ("scan", "checkpoints"): 0, ("scan_revolve", "carries"): 0, ("scan_revolve", "slices"): 0,
           ("scan_revolve", "cotangents"): 0, ("scan_revolve", "ys"): 0, ("scan_revolve", "snapshots"): 1,
           ("scan_revolve", "length"): -1, ("conv2d", "groups"): 1, ("conv2d_transpose", "groups"): 1,
           ("conv2d_filter_grad", "groups"): 1, ("one_hot", "depth"): 1, ("scatter_add", "axis"): 0,
           ("scatter_add", "size"): 0}

CAST_DTYPES = (F64, F32, I64, BOOL, F16, I32, I16, I8, U8)
LEAVES = ("input", "param", "constant")


# ----------------------------------------------------------------------------------------------
# the model


def _check_model(model, payload: bytes) -> None:
    if not model.HasField("graph"):
        _fail("graph not set")
    pay = _Payload(payload)
    _check_graph(model.graph, pay, "", body=False)
    snames = set()
    for t in model.state:
        if not t.name or t.name in snames:
            _fail(f"state {t.name!r}: empty or duplicate name")
        snames.add(t.name)
        _check_tensor(t, f"state {t.name!r}", pay)
    pay.finish()


def _check_graph(g, pay, where: str, body: bool) -> None:
    """One graph (a body, with no params, when `body`); its tensors are taken from `pay` in order."""
    known: dict[str, tuple] = {}
    for i, node in enumerate(g.node):
        w = f"{where}node {i} {node.name!r} ({node.op})"
        if not node.name:
            _fail(f"{w}: empty name")
        if node.name in known:
            _fail(f"{w}: duplicate name")
        if node.dtype == pb.DATA_TYPE_UNSPECIFIED:
            _fail(f"{w}: dtype unspecified")
        dt = TUPLE if node.dtype == pb.DATA_TYPE_TUPLE and node.op not in LEAVES else _dtype(node.dtype, w)
        if body and node.op == "param":
            _fail(f"{w}: a param in a body")
        if not node.HasField("shape"):
            _fail(f"{w}: shape not set")
        shape = _shape(node.shape, w)
        if node.op in LEAVES:
            if node.input or node.attr:
                _fail(f"{w}: a leaf has inputs or attributes")
            if node.op == "input":
                if node.HasField("value") or node.HasField("trainable"):
                    _fail(f"{w}: an input has a value or trainable")
            else:
                if node.op == "constant" and node.HasField("trainable"):
                    _fail(f"{w}: trainable on a constant")
                if node.op == "param" and dt not in FLOATS:
                    _fail(f"{w}: param dtype {dt}")
                if not node.HasField("value"):
                    _fail(f"{w}: no value")
                if node.value.name:
                    _fail(f"{w}: node value has a name")
                vdt, vdims = _check_tensor(node.value, w, pay)
                if vdt != dt or tuple(vdims) != shape:
                    _fail(f"{w}: value {vdt}{vdims} disagrees with node {dt}{shape}")
        else:
            if node.HasField("value") or node.HasField("trainable"):
                _fail(f"{w}: an op node has a value or trainable")
            if node.op not in OPS:
                if "/" in node.op:
                    _fail(f"{w}: user op {node.op!r} must be defined before the file is loaded")
                _fail(f"{w}: unknown op {node.op!r}")
            (lo, hi), decl, drule, srule = OPS[node.op]
            n = len(node.input)
            if n < lo or (hi is not None and n > hi):
                _fail(f"{w}: {n} inputs, takes {lo}..{hi}")
            ins = []
            for name in node.input:
                if name not in known:
                    _fail(f"{w}: input {name!r} is not an earlier node")
                if known[name][0] == TUPLE and node.op != "result":
                    _fail(f"{w}: input {name!r} is a tuple of results")
                ins.append(known[name])
            attrs = {}
            for a in node.attr:
                if not a.name:
                    _fail(f"{w}: attribute with an empty name")
                if a.name in attrs:
                    _fail(f"{w}: attribute {a.name!r} twice")
                if a.name not in decl:
                    _fail(f"{w}: unknown attribute {a.name!r}")
                if not a.HasField("value"):
                    _fail(f"{w}: attribute {a.name!r} without a value")
                attrs[a.name] = _attr_value(a.value, decl[a.name][0], f"{w} attribute {a.name!r}", pay)
                low = MINIMUM.get((node.op, a.name))
                if low is not None and attrs[a.name] < low:
                    _fail(f"{w}: attribute {a.name!r} below {low}")
            for name, (_, default) in decl.items():
                if name not in attrs:
                    if default is _REQ:
                        _fail(f"{w}: required attribute {name!r} missing")
                    attrs[name] = default
            if node.op == "cast" and attrs["dtype"] not in CAST_DTYPES:
                _fail(f"{w}: cast to {attrs['dtype']!r}")
            want_dt = drule(ins, attrs, w)
            want_shape = tuple(srule(ins, attrs, w))
            parts = _PARTS.pop(id(attrs), None)
            if (want_dt, want_shape) != (dt, shape):
                raise InferenceMismatch(f"{w}: stored {dt} {shape}, inference gives {want_dt} {want_shape}",
                                        want_dt, want_shape)
        known[node.name] = (dt, shape, parts if node.op not in LEAVES else None)
    names = set()
    for o in g.output:
        if not o.name or o.name in names:
            _fail(f"output {o.name!r}: empty or duplicate name")
        names.add(o.name)
        if o.node not in known:
            _fail(f"output {o.name!r}: node {o.node!r} not in the graph")
        if known[o.node][0] == TUPLE:
            _fail(f"output {o.name!r}: a tuple of results")

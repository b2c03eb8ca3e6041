"""Saving and loading models: the file format of `proto/cgraph.proto` (read it for the layout).

A file is a protobuf `Model` message, then a payload section of large tensors (empty for
models whose tensors total at most `INLINE_LIMIT` bytes, so that the file is plain protobuf),
then a 30-byte footer with both lengths and a CRC-32 of the message. Tensors in the payload are
found by (offset, length, CRC-32), so a model of any size stays one file with no 2 GiB wall;
the payload starts at a multiple of 64 bytes, so tensors can be used in place from a map.

Loading never runs code from the file and validates everything before building the graph:
any problem is a `GraphFormatError` of one line, never another exception, a hang, or an
allocation larger than the file justifies. Tensor bytes are copied once, from the file into
the arrays the graph keeps (or not at all, with `mmap=True`), and checksummed piece by piece
on the way in and out. Saving is atomic: a temporary file in the same folder, flushed to
disk, then renamed over the target (`cgraph.files`).
"""

from __future__ import annotations

import mmap as _mmap
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any, BinaryIO

import networkx as nx
import numpy as np
from zlib_ng.zlib_ng import crc32  # zlib's CRC-32, at memory speed (zlib's runs at a fifth of it)

from cgraph._proto import cgraph_pb2 as pb
from cgraph.errors import CgraphError, GraphFormatError, one_line
from cgraph.files import replace_file
from cgraph.graph import LEAF_OPS, Graph, GraphError, format_shape
from cgraph.ops.registry import Subgraph, get_op
from cgraph.shapes import TUPLE
from cgraph.version import __version__

__all__ = ["FORMAT_VERSION", "INLINE_LIMIT", "READER_VERSION", "ModelFile", "dumps", "load", "loads",
           "read_model", "save"]

FORMAT_VERSION = 4  # the FormatVersion this module writes
READER_VERSION = 4  # the newest min_reader_version this module can read
MIN_READER_VERSION = 1  # what files written by this module need, unless they hold control flow
CONTROL_FLOW_VERSION = 3  # what files with control flow (subgraphs, tuples of results) need
NARROW_DTYPES_VERSION = 4  # what files with a float16, int32, int16, int8 or uint8 tensor or node need
INLINE_LIMIT = 16 * 2**20  # tensors stay inline (plain protobuf) while they total at most this
INLINE_REST = 2**20  # past it, the largest go to the payload until those left total at most this
ALIGN = 64  # the payload section starts at a multiple of this (Model.padding)
MAGIC = b"CGPB"
FOOTER_SIZE = 30
MAX_NESTING = 24  # bodies inside bodies: each adds 4 messages, and protobuf parsers stop at 100
_FOOTER_TAG = b"\x7a\x1c"  # Model field 15, length-delimited, 28 bytes
_MAX_NDIM = 64  # numpy's limit
_MAX_MESSAGE = 2**31 - 1  # protobuf's limit on a message's size
_PIECE = 16 * 2**20  # payload tensors are read and written in pieces of this size: large enough
                     # to keep a disk busy, small enough to be checksummed while in the CPU's cache

_DTYPES: dict[np.dtype, pb.DataType] = {
    np.dtype(np.float64): pb.DATA_TYPE_FLOAT64,
    np.dtype(np.float32): pb.DATA_TYPE_FLOAT32,
    np.dtype(np.int64): pb.DATA_TYPE_INT64,
    np.dtype(np.bool_): pb.DATA_TYPE_BOOL,
    np.dtype(np.float16): pb.DATA_TYPE_FLOAT16,
    np.dtype(np.int32): pb.DATA_TYPE_INT32,
    np.dtype(np.int16): pb.DATA_TYPE_INT16,
    np.dtype(np.int8): pb.DATA_TYPE_INT8,
    np.dtype(np.uint8): pb.DATA_TYPE_UINT8,
}
_NARROW = frozenset(_DTYPES.values()) - {pb.DATA_TYPE_FLOAT64, pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_INT64,
                                        pb.DATA_TYPE_BOOL}  # the dtypes of version 4
_FROM_CODE: dict[int, np.dtype] = {code: dt for dt, code in _DTYPES.items()}
_NODE_FROM_CODE = {**_FROM_CODE, pb.DATA_TYPE_TUPLE: TUPLE}  # a node may be a tuple of results


# ---- public API ---------------------------------------------------------------------------

def save(g: Graph, path: str | os.PathLike[str], *, inline_limit: int = INLINE_LIMIT) -> None:
    """Write `g` (nodes, params, constants, outputs, metadata, state) to `path`, atomically:
    a crash or error midway leaves any previous file at `path` as it was. A symbolic link is
    followed, and an existing file keeps its permissions (see `cgraph.files.replace_file`)."""
    model, payload = _encode(g, inline_limit)
    replace_file(path, lambda f: _write_file(f, model, payload))


def dumps(g: Graph, *, inline_limit: int = INLINE_LIMIT) -> bytes:
    """The bytes `save` would write."""
    model, payload = _encode(g, inline_limit)
    out = BytesIO()
    _write_file(out, model, payload)
    return out.getvalue()


def load(path: str | os.PathLike[str], *, mmap: bool = False) -> Graph:
    """The graph saved at `path`; GraphFormatError if the file is not a valid model.

    Everything is checked before the graph is built: the footer, the message's CRC-32, the
    structure (ops, attributes, names, order, shapes by re-running inference, byte counts,
    bool bytes) and the CRC-32 of every tensor read. Each tensor is read straight into the
    array the graph keeps (one copy in memory).

    `mmap=True` maps the file instead: params, constants and state in the payload section are
    read-only views of it, so a model of any size opens in milliseconds and pages in only what
    is used (and is shared by every process mapping the file). Everything above is still
    checked at open except the CRC-32s of the mapped tensors, which would mean reading them
    all: `cgraph check` (or a load without mmap) verifies those. Small tensors stored in the
    message, and payload tensors not aligned to their element size (files written before
    format version 2), are read and checked as usual. The map lives as long as an array from
    it does; `set_param` replaces an array without touching the file, and `cg.save` over the
    same path writes a new file and renames it over the old one, which stays intact for the
    arrays still mapping it. Rewriting or truncating the file in place while it is mapped (by
    another program) changes the arrays or, for truncation, ends the process with SIGBUS, as
    with any mapped file.
    """
    return read_model(path, mmap=mmap).graph


def loads(data: bytes | bytearray | memoryview) -> Graph:
    """The graph in `data` (the bytes of a model file)."""
    try:
        view = memoryview(data)
    except TypeError:
        hint = ": for a file, use cg.load(path)" if isinstance(data, (str, os.PathLike)) else ""
        raise TypeError(f"cg.loads takes the bytes of a model file, not {type(data).__name__}{hint}") from None
    return _read(_BytesSource(view), "").graph


@dataclass(frozen=True)
class ModelFile:
    """A loaded model with what its file says about itself (for `cgraph info`)."""

    graph: Graph
    format_version: int
    min_reader_version: int
    producer: str  # name and version of the program that wrote it
    file_bytes: int
    payload_bytes: int  # bytes of tensors stored after the message (0: a plain protobuf file)


def read_model(path: str | os.PathLike[str], *, mmap: bool = False, verify: bool = False) -> ModelFile:
    """Load and validate the model at `path`, with its format version and producer (`mmap`: as
    for `load`; `verify`: check the mapped tensors' CRC-32s at open too, reading the file once
    but copying nothing, as `cgraph check` does). A file that cannot be opened or read raises
    OSError (FileNotFoundError, ...) as `open` does."""
    with open(path, "rb", buffering=0) as f:
        return _read(_FileSource(f, mmap, verify), f"{os.fspath(path)}: ")


# ---- writing ------------------------------------------------------------------------------

def _encode(g: Graph, inline_limit: int) -> tuple[pb.Model, list[tuple[pb.PayloadRef, np.ndarray]]]:
    """The message, and the arrays of the payload section in order with the references to them
    (their CRC-32s are filled in as they are written)."""
    model = pb.Model(format_version=FORMAT_VERSION, min_reader_version=MIN_READER_VERSION,
                     producer_name="cgraph", producer_version=__version__)
    v: Any  # metadata strings here, state arrays below
    for k, v in g.metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise GraphError(f"cannot save graph {g.name!r}: metadata {k!r} -> {v!r} is not str -> str")
        model.metadata[k] = v
    slots: list[tuple[pb.Tensor, np.ndarray]] = []
    if _encode_graph(model.graph, g, slots, f"cannot save graph {g.name!r}: "):
        model.min_reader_version = CONTROL_FLOW_VERSION
    for k, v in g.state.items():
        if not isinstance(k, str) or not k:
            raise GraphError(f"cannot save graph {g.name!r}: state names must be non-empty str, got {k!r}")
        slots.append((model.state.add(name=k), _little_endian(v, f"state {k!r}")))

    in_payload = _choose_payload([a.nbytes for _, a in slots], inline_limit)
    payload, offset = [], 0
    for i, (msg, arr) in enumerate(slots):
        msg.dtype = _dtype_code(arr.dtype, "")
        msg.dims.extend(arr.shape)
        if i in in_payload:
            msg.payload.offset, msg.payload.length = offset, arr.nbytes
            msg.payload.crc32 = 0  # present, so the message's length is final now
            offset += arr.nbytes
            payload.append((msg.payload, arr))
        else:
            msg.raw_data = arr.tobytes()
    if any(msg.dtype in _NARROW for msg, _ in slots) or _uses_narrow(model.graph):
        model.min_reader_version = max(model.min_reader_version, NARROW_DTYPES_VERSION)
    return model, payload


def _uses_narrow(msg: pb.Graph) -> bool:
    """Whether a node of the graph or of a subgraph has a dtype of version 4."""
    return any(n.dtype in _NARROW or any(a.value.HasField("graph") and _uses_narrow(a.value.graph) for a in n.attr)
               for n in msg.node)


def _encode_graph(msg: pb.Graph, g: Graph, slots: list[tuple[pb.Tensor, np.ndarray]], where: str,
                  depth: int = 0) -> bool:
    """Fill `msg` with `g` (a body `depth` graphs down), adding its stored tensors (depth first)
    to `slots`; returns whether it holds control flow (a reader of version 2 is needed)."""
    if depth > MAX_NESTING:  # a file no protobuf reader would parse: refused before it is written
        raise GraphError(f"{where.removesuffix(': ')}: bodies nested {depth} deep; a file holds at most "
                         f"{MAX_NESTING} (protobuf readers parse at most 100 nested messages)")
    msg.SetInParent()
    msg.name = g.name
    control = False
    for node in g.nodes.values():
        if not node.is_leaf:  # what `load` would refuse, refused now, in the same words
            try:
                get_op(node.op).check(node.name, len(node.inputs), node.attrs)
            except GraphError as e:
                raise GraphError(f"{where}{e}") from None
        control |= node.dtype == TUPLE
        n = msg.node.add(name=node.name, op=node.op, input=node.inputs,
                         dtype=_dtype_code(node.dtype, f"node {node.name!r} ({node.op})", node=True))
        _encode_shape(n.shape, node.shape)
        if node.op == "param":
            n.trainable = bool(node.attrs.get("trainable", True))
        attrs = {k: v for k, v in node.attrs.items() if not (node.op == "param" and k == "trainable")}
        for k, v in attrs.items():
            at = f"node {node.name!r} ({node.op}) attribute {k!r}"
            if isinstance(v, Graph):
                _encode_graph(n.attr.add(name=k).value.graph, v, slots, f"{where}{at}: ", depth + 1)
                control = True
            else:
                _encode_attr(n.attr.add(name=k).value, v, at)
        if node.op in ("param", "constant"):
            slots.append((n.value, _little_endian(g.value(node.name), f"{node.op} {node.name!r}")))
    for out, t in g.outputs.items():
        msg.output.add(name=out, node=t.name)
    return control


def _choose_payload(sizes: list[int], inline_limit: int) -> set[int]:
    """Which tensors go to the payload: none if all fit under the limit (a plain protobuf
    file), else the largest first until those left total at most `INLINE_REST` (or the limit,
    if smaller): a reader can read payload tensors without copies, or map them."""
    total, chosen = sum(sizes), set()
    rest = min(inline_limit, INLINE_REST) if total > inline_limit else total
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        if total <= rest:
            break
        chosen.add(i)
        total -= sizes[i]
    return chosen


def _dtype_code(dtype: np.dtype, what: str, node: bool = False) -> pb.DataType:
    if node and dtype == TUPLE:
        return pb.DATA_TYPE_TUPLE
    code = _DTYPES.get(np.dtype(dtype).newbyteorder("="))
    if code is None:
        raise GraphError(f"cannot save {what}: dtype {dtype} is not one of {', '.join(str(d) for d in _DTYPES)}")
    return code


def _little_endian(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value)
    _dtype_code(arr.dtype, what)
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")  # (ascontiguousarray makes 0-d 1-d)


def _byte_view(arr: np.ndarray) -> memoryview:
    return memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # ndarray is a buffer


def _write_file(f: BinaryIO, model: pb.Model, payload: list[tuple[pb.PayloadRef, np.ndarray]]) -> None:
    """Write a whole model file to `f` (empty, seekable): the payload section first, each
    tensor checksummed piece by piece as it is written, then the message (which holds those
    checksums; its length does not depend on them) at the start, then the footer."""
    if not payload:
        message = model.SerializeToString(deterministic=True)
        _write(f, message)
        _write(f, _footer(len(message), 0, crc32(message)))
        return
    m_len = len(_padded_message(model))
    f.seek(m_len)
    for ref, arr in payload:
        ref.crc32 = _write_checksummed(f, _byte_view(arr))
    message = _padded_message(model)
    assert len(message) == m_len, "the message's length must not depend on the checksums"
    _write(f, _footer(m_len, sum(a.nbytes for _, a in payload), crc32(message)))
    f.seek(0)
    _write(f, message)


def _write_checksummed(f: BinaryIO, view: memoryview) -> int:
    """Write `view` in pieces, each checksummed just before it is written (while it is in the
    CPU's cache, so the bytes are fetched from memory once); their CRC-32."""
    crc = 0
    for start in range(0, len(view), _PIECE):
        piece = view[start:start + _PIECE]
        crc = crc32(piece, crc)
        _write(f, piece)
    return crc


def _padded_message(model: pb.Model) -> bytes:
    """The message with `padding` making its length a multiple of ALIGN (the payload's start)."""
    model.ClearField("padding")
    n = len(model.SerializeToString(deterministic=True)) + 2  # + the field's tag and length bytes
    model.padding = bytes(-n % ALIGN or ALIGN)  # 1 to 64 bytes: one length byte, never absent
    data = model.SerializeToString(deterministic=True)
    assert len(data) % ALIGN == 0
    return data


def _footer(message_length: int, payload_length: int, crc: int) -> bytes:
    footer = pb.Footer(magic=int.from_bytes(MAGIC, "little"), message_length=message_length,
                       payload_length=payload_length, message_crc32=crc)
    data = _FOOTER_TAG + footer.SerializeToString()
    assert len(data) == FOOTER_SIZE, "the footer must be exactly 30 bytes"
    return data


def _write(f: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def _encode_shape(msg: pb.Shape, shape: tuple[int | None, ...]) -> None:
    msg.SetInParent()  # present even for a scalar's empty shape
    for d in shape:
        if d is None:
            msg.dim.add(none=True)
        else:
            msg.dim.add(value=int(d))


def _encode_attr(msg: pb.AttrValue, value: Any, what: str) -> None:
    if isinstance(value, (bool, np.bool_)):
        msg.b = bool(value)
    elif isinstance(value, (int, np.integer)):
        msg.i = int(value)
    elif isinstance(value, str):
        msg.s = value
    elif isinstance(value, (float, np.floating)):
        msg.f = float(value)
    elif isinstance(value, (tuple, list)) and all(_is_opt_int(v) for v in value):
        msg.ints.SetInParent()
        for v in value:
            msg.ints.item.add(**({"none": True} if v is None else {"value": int(v)}))
    elif isinstance(value, (tuple, list)):
        msg.index.SetInParent()
        for v in value:
            item = msg.index.item.add()
            if v is None:
                item.new_axis = True
            elif v is Ellipsis:
                item.ellipsis = True
            elif _is_opt_int(v):
                item.at = int(v)
            elif isinstance(v, slice) and all(_is_opt_int(b) for b in (v.start, v.stop, v.step)):
                item.slice.SetInParent()
                for field in ("start", "stop", "step"):
                    if getattr(v, field) is not None:
                        setattr(item.slice, field, int(getattr(v, field)))
            else:
                raise GraphError(f"cannot save {what}: index entry {v!r} is not an int, slice, None or ...")
    else:
        raise GraphError(f"cannot save {what}: values of type {type(value).__name__} are not supported")


def _is_opt_int(v: Any) -> bool:
    return v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)))


# ---- reading ------------------------------------------------------------------------------

class _Fail(Exception):
    """A validation failure; `_read` turns it into one GraphFormatError line."""


class _BytesSource:
    """The bytes of a model in memory (`loads`)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.view = memoryview(data).cast("B")
        self.size = len(self.view)
        self.map = None

    def read(self, offset: int, n: int) -> bytes:
        return bytes(self.view[offset:offset + n])

    def readinto(self, offset: int, out: memoryview) -> int:
        """Copy bytes [offset, offset + len(out)) into `out`; their CRC-32."""
        data = self.view[offset:offset + len(out)]
        np.frombuffer(out, np.uint8)[:] = np.frombuffer(data, np.uint8)
        return crc32(data)


class _FileSource:
    """A model file, read with positioned reads (no seeks, no intermediate buffers), or mapped."""

    def __init__(self, f: BinaryIO, mapped: bool, verify: bool) -> None:
        self.fd = f.fileno()
        self.size = os.fstat(self.fd).st_size
        self.verify = verify  # check the CRC-32s of mapped tensors too
        self.map = None
        if mapped and self.size:
            extra = {"trackfd": False} if sys.version_info >= (3, 13) else {}  # no second descriptor
            self.map = _mmap.mmap(self.fd, self.size, access=_mmap.ACCESS_READ, **extra)

    def read(self, offset: int, n: int) -> bytes:
        data = os.pread(self.fd, n, offset)  # one allocation: the bytes object itself
        if len(data) < n:
            out = bytearray(n)
            self.readinto(offset, memoryview(out))
            data = bytes(out)
        return data

    def readinto(self, offset: int, out: memoryview) -> int:
        """Read bytes [offset, offset + len(out)) into `out` in pieces, each checksummed just
        after it is read (while it is in the CPU's cache); their CRC-32."""
        done, crc = 0, 0
        while done < len(out):
            got = os.preadv(self.fd, [out[done:done + _PIECE]], offset + done)
            if not got:
                raise _Fail(f"file ended at byte {offset + done} while reading {len(out)} bytes from {offset}")
            crc = crc32(out[done:done + got], crc)
            done += got
        return crc


def _read(src: _BytesSource | _FileSource, where: str) -> ModelFile:
    try:
        return _read_checked(src)
    except (_Fail, CgraphError) as e:  # CgraphError: shape inference while rebuilding
        raise GraphFormatError(one_line(f"{where}{e}")) from None


def _read_checked(src: _BytesSource | _FileSource) -> ModelFile:
    message, p_len = _check_framing(src)
    m_len = len(message)
    model = _parse(message)
    del message
    _check_versions(model)
    _check_graph(model)
    tensors = _tensor_slots(model)
    inline = _check_tensor_layout(tensors, p_len)
    values = [_read_tensor(src, msg, raw, what, m_len, own)
              for (msg, what, own), raw in zip(tensors, inline, strict=True)]
    del inline
    g = _build(model, iter(values))
    producer = " ".join(s for s in (model.producer_name, model.producer_version) if s) or "unknown"
    return ModelFile(g, model.format_version, model.min_reader_version, producer, src.size, p_len)


def _check_framing(src: _BytesSource | _FileSource) -> tuple[bytes, int]:
    """The message section and the payload length, once the footer and CRC-32 check out."""
    size = src.size
    if size == 0:
        raise _Fail("not a cgraph model: the file is empty")
    if size < FOOTER_SIZE:
        raise _Fail(f"not a cgraph model: {size} bytes is shorter than the {FOOTER_SIZE}-byte footer "
                    "(truncated?)")
    tail = src.read(size - FOOTER_SIZE, FOOTER_SIZE)
    fixed = {0: 0x7A, 1: 0x1C, 2: 0x0D, 7: 0x11, 16: 0x19, 25: 0x25}
    if any(tail[i] != b for i, b in fixed.items()) or tail[3:7] != MAGIC:
        raise _Fail("not a cgraph model, or truncated: no cgraph footer in the last 30 bytes")
    m_len = int.from_bytes(tail[8:16], "little")
    p_len = int.from_bytes(tail[17:25], "little")
    crc = int.from_bytes(tail[26:30], "little")
    if m_len > _MAX_MESSAGE:  # refused before reading: no protobuf parser takes a message this long
        raise _Fail(f"corrupted: the footer claims a message section of {m_len} bytes, more than protobuf's "
                    f"limit of {_MAX_MESSAGE} (2 GiB - 1)")
    if m_len + p_len + FOOTER_SIZE != size:
        raise _Fail(f"truncated or corrupted: the footer describes {m_len + p_len + FOOTER_SIZE} bytes "
                    f"(message {m_len}, payload {p_len}, footer {FOOTER_SIZE}), the file has {size}")
    if m_len == 0:
        raise _Fail("corrupted: the message section is empty")
    message = src.read(0, m_len)
    if crc32(message) != crc:
        raise _Fail(f"corrupted: the CRC-32 of the message section (bytes 0-{m_len - 1}) does not match")
    return message, p_len


def _parse(data: bytes) -> pb.Model:
    try:
        model = pb.Model.FromString(data)
    except Exception as e:  # any parser failure on untrusted bytes is a format error
        raise _Fail(f"the message section is not a valid cgraph.Model protobuf: {e}") from None
    if model.HasField("footer"):
        raise _Fail("corrupted: a footer inside the message section")
    return model


def _check_versions(model: pb.Model) -> None:
    fv, mr = model.format_version, model.min_reader_version
    if fv < 1 or mr < 1 or mr > fv:
        raise _Fail(f"bad versions: format_version {fv}, min_reader_version {mr}")
    if mr > READER_VERSION:
        raise _Fail(f"the file needs a reader of format version {mr} or newer (written as version {fv} by "
                    f"{model.producer_name or 'unknown'} {model.producer_version}); cgraph {__version__} "
                    f"reads format version {READER_VERSION}: upgrade cgraph")


def _check_graph(model: pb.Model) -> None:
    """Names, ops, attributes, references and order, of the graph and its subgraphs; no tensor
    data is read here."""
    if not model.HasField("graph"):
        raise _Fail("the model has no graph")
    _check_graph_msg(model.graph, "", body=False)
    names: set[str] = set()
    for t in model.state:
        if not t.name or t.name in names:
            raise _Fail(f"state {t.name!r}: {'empty' if not t.name else 'duplicate'} state name")
        names.add(t.name)


def _check_graph_msg(graph: pb.Graph, where: str, body: bool) -> None:
    """`_check_graph` for one graph (a body when `body`); errors start with `where`."""
    seen: dict[str, int] = {}
    dag = nx.DiGraph()
    for i, node in enumerate(graph.node):
        at = f"{where}node {i} ({node.name!r}, op {node.op!r})"
        if not node.name:
            raise _Fail(f"{where}node {i} (op {node.op!r}) has an empty name")
        if node.name in seen:
            raise _Fail(f"{at}: the name is used by node {seen[node.name]} too")
        seen[node.name] = i
        leaf = node.op in LEAF_OPS
        if not leaf:
            try:
                get_op(node.op)
            except GraphError as e:
                raise _Fail(f"{at}: {e}") from None
        if node.dtype not in _NODE_FROM_CODE or (leaf and node.dtype not in _FROM_CODE):
            raise _Fail(f"{at}: unknown dtype code {node.dtype}")
        if body and node.op == "param":
            raise _Fail(f"{at}: a body has no params (it reads the values of the graph around it as inputs)")
        if not node.HasField("shape"):
            raise _Fail(f"{at}: no shape")
        _decode_shape(node.shape, at, allow_none=True)
        has_value = node.op in ("param", "constant")
        if node.HasField("value") != has_value:
            raise _Fail(f"{at}: {'no' if has_value else 'unexpected'} stored value")
        if has_value:
            v = node.value
            if v.name:
                raise _Fail(f"{at}: a node's value must not have a name")
            if v.dtype != node.dtype or list(v.dims) != [d.value for d in node.shape.dim] \
                    or any(d.HasField("none") for d in node.shape.dim):
                raise _Fail(f"{at}: the node's shape and dtype differ from its value's")
            if node.op == "param" and _FROM_CODE.get(v.dtype, np.dtype(np.float64)).kind != "f":
                raise _Fail(f"{at}: params must be floats, not {_FROM_CODE[v.dtype]}")
        if node.HasField("trainable") and node.op != "param":
            raise _Fail(f"{at}: only params have a trainable flag")
        if leaf and (node.input or node.attr):
            raise _Fail(f"{at}: a leaf takes no inputs or attributes")
        if not leaf:  # the op's declaration: its inputs and attributes, in the builder's words
            try:
                get_op(node.op).check(node.name, len(node.input), _decode_attrs(node, at))
            except GraphError as e:
                raise _Fail(f"{where}{e}") from None
            for a in node.attr:
                if a.value.WhichOneof("value") == "graph":
                    _check_graph_msg(a.value.graph, f"{at} attribute {a.name!r}: ", body=True)
        dag.add_node(node.name)
        dag.add_edges_from((src, node.name) for src in node.input)
    for node in graph.node:
        for src in node.input:
            if src not in seen:
                raise _Fail(f"{where}node {node.name!r} ({node.op}): input {src!r} is not a node of the graph")
    if not nx.is_directed_acyclic_graph(dag):
        cycle = [u for u, _ in nx.find_cycle(dag)]
        raise _Fail(f"{where}the graph has a cycle: {' -> '.join(map(repr, [*cycle, cycle[0]]))}")
    for i, node in enumerate(graph.node):
        late = [src for src in node.input if seen[src] >= i]
        if late:
            raise _Fail(f"{where}node {node.name!r} ({node.op}): input {late[0]!r} comes later in the file "
                        "(nodes must be in topological order)")
    outs: set[str] = set()
    for out in graph.output:
        if not out.name or out.name in outs:
            raise _Fail(f"{where}output {out.name!r}: {'empty' if not out.name else 'duplicate'} output name")
        outs.add(out.name)
        if out.node not in seen:
            raise _Fail(f"{where}output {out.name!r}: node {out.node!r} is not a node of the graph")


def _tensor_slots(model: pb.Model) -> list[tuple[pb.Tensor, str, bool]]:
    """Every stored tensor in file order (node values, a node's subgraphs' where it stands,
    then state), with whether the loaded array must be writable (state arrays are; params and
    constants are read-only)."""
    return _graph_slots(model.graph, "") + [(t, f"state {t.name!r}", True) for t in model.state]


def _graph_slots(graph: pb.Graph, where: str) -> list[tuple[pb.Tensor, str, bool]]:
    slots = []
    for n in graph.node:
        if n.HasField("value"):
            slots.append((n.value, f"{where}{n.op} {n.name!r}", False))
        for a in n.attr:
            if a.value.WhichOneof("value") == "graph":
                slots += _graph_slots(a.value.graph, f"{where}{n.name!r} attribute {a.name!r}: ")
    return slots


def _tensor_bytes(msg: pb.Tensor, what: str) -> tuple[np.dtype, tuple[int, ...], int]:
    if msg.dtype not in _FROM_CODE:
        raise _Fail(f"{what}: unknown dtype code {msg.dtype}")
    dtype = _FROM_CODE[msg.dtype]
    if len(msg.dims) > _MAX_NDIM:
        raise _Fail(f"{what}: {len(msg.dims)} dimensions (at most {_MAX_NDIM})")
    dims = tuple(int(d) for d in msg.dims)
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow
    return dtype, dims, count * dtype.itemsize


def _check_tensor_layout(tensors: list[tuple[pb.Tensor, str, bool]], payload_length: int) -> list[bytes | None]:
    """Byte counts match dtype and dims; payload ranges tile the payload exactly. Returns the
    inline bytes of each tensor (None for payload ones): each read of `raw_data` copies."""
    offset, inline = 0, []
    for msg, what, _ in tensors:
        dtype, dims, nbytes = _tensor_bytes(msg, what)
        kind = msg.WhichOneof("data")
        shape = format_shape(dims)
        if kind is None:
            raise _Fail(f"{what}: the tensor has no data")
        raw = msg.raw_data if kind == "raw_data" else None
        inline.append(raw)
        if raw is not None and len(raw) != nbytes:
            raise _Fail(f"{what}: {dtype} {shape} needs {nbytes} bytes, the file has {len(raw)}")
        if kind == "payload":
            ref = msg.payload
            if ref.length != nbytes:
                raise _Fail(f"{what}: {dtype} {shape} needs {nbytes} bytes, its payload range has {ref.length}")
            if ref.offset != offset or ref.offset + ref.length > payload_length:
                raise _Fail(f"{what}: payload range {ref.offset}+{ref.length} is not at the expected offset "
                            f"{offset} or exceeds the payload's {payload_length} bytes")
            offset += ref.length
    if offset != payload_length:
        raise _Fail(f"the payload has {payload_length} bytes, its tensors cover {offset}")
    return inline


def _read_tensor(src: _BytesSource | _FileSource, msg: pb.Tensor, raw: bytes | None, what: str,
                 payload_start: int, writable: bool) -> np.ndarray:
    """The tensor's array, in one copy of memory: inline bytes are used where they are (the
    bytes object read from the message); payload bytes are read straight into the array and
    checked against their CRC-32, or, from a mapped file, viewed in place (and checked only
    if the source says so)."""
    dtype, dims, nbytes = _tensor_bytes(msg, what)  # checked against the file: safe to allocate
    stored = dtype.newbyteorder("<")
    count = nbytes // dtype.itemsize
    start, crc = payload_start + msg.payload.offset, None
    if raw is not None:
        arr = np.frombuffer(raw, stored)
        if writable or not arr.flags.aligned:
            arr = arr.copy()
    elif src.map is not None and start % dtype.alignment == 0:
        arr = np.frombuffer(src.map, stored, count, start)  # read-only: the map is
        crc = crc32(_byte_view(arr)) if src.verify else None
    else:
        arr = _new_array(count, stored)
        crc = src.readinto(start, _byte_view(arr))
    if crc is not None and crc != msg.payload.crc32:
        raise _Fail(f"{what}: corrupted: the CRC-32 of its payload bytes does not match")
    if dtype == np.bool_ and count and arr.view(np.uint8).max() > 1:
        raise _Fail(f"{what}: bool elements must be bytes 0 or 1")
    return arr.astype(dtype, copy=False).reshape(dims)


def _new_array(count: int, dtype: np.dtype) -> np.ndarray:
    """An array to read a tensor into. A large one is its own private anonymous map (zero pages
    until read into, unmapped with the array) rather than numpy's allocation, which asks Linux
    for transparent huge pages: on this project's virtual machines those at times fault in
    several times slower than plain pages (a warm 1 GiB load in fresh processes took 13-18 s
    against 3-4 s, side by side), and never measured faster."""
    if count * dtype.itemsize < _PIECE:
        return np.empty(count, dtype)
    memory = _mmap.mmap(-1, count * dtype.itemsize, flags=_mmap.MAP_PRIVATE)  # zero pages, freed with the array
    return np.frombuffer(memory, dtype, count)


def _build(model: pb.Model, values: Iterator[np.ndarray]) -> Graph:
    """The graph; `values` are the stored tensors in file order (as `_tensor_slots`)."""
    g = _build_graph(model.graph, values, "")
    g.metadata.update(model.metadata)
    for t in model.state:
        g.state[t.name] = next(values)
    return g


def _build_graph(msg: pb.Graph, values: Iterator[np.ndarray], where: str) -> Graph:
    """One graph (`where` is not empty for a body, which comes out frozen)."""
    g = Graph(msg.name)
    for node in msg.node:
        at = f"{where}node {node.name!r} ({node.op})"
        dtype = _NODE_FROM_CODE[node.dtype]
        shape = _decode_shape(node.shape, at, allow_none=node.op not in ("param", "constant"))
        if node.op in LEAF_OPS:
            value = next(values) if node.HasField("value") else None
            frozen = node.HasField("trainable") and not node.trainable  # absent means trainable
            g.add_leaf(node.op, node.name, shape, dtype, value, trainable=not frozen)
            continue
        attrs = _decode_attrs(node, at, lambda m, a, at=at: _build_graph(m, values, f"{at} attribute {a!r}: "))
        try:
            t = g.add_node(node.op, list(node.input), attrs, name=node.name)
        except CgraphError as e:  # ShapeError, GraphError: one line naming the node already
            raise _Fail(f"{where}{e}") from None
        except Exception as e:  # an op's shape rule meeting attribute values it never expected
            raise _Fail(f"{at}: shape inference failed: {type(e).__name__}: {e}") from None
        if t.shape != shape or t.dtype != dtype:
            raise _Fail(f"{at}: the file says {format_shape(shape)} {dtype}, shape inference gives "
                        f"{format_shape(t.shape)} {t.dtype}")
    for out in msg.output:
        try:
            g.output(out.name, g[out.node])
        except CgraphError as e:
            raise _Fail(f"{where}{e}") from None
    return g.freeze() if where else g


def _decode_shape(msg: pb.Shape, at: str, allow_none: bool) -> tuple[int | None, ...]:
    if len(msg.dim) > _MAX_NDIM:
        raise _Fail(f"{at}: {len(msg.dim)} dimensions (at most {_MAX_NDIM})")
    dims = _decode_ints(msg.dim, at)
    if any(d is not None and d < 0 for d in dims) or (not allow_none and None in dims):
        raise _Fail(f"{at}: bad shape {format_shape(dims)}")
    return dims


def _decode_ints(items: Any, at: str) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for it in items:
        kind = it.WhichOneof("kind")
        if kind is None or (kind == "none" and not it.none):
            raise _Fail(f"{at}: an integer entry with neither a value nor none=true")
        out.append(None if kind == "none" else it.value)
    return tuple(out)


def _decode_attrs(node: pb.Node, at: str, graph: Any = None) -> dict[str, Any]:
    """The attributes as Python values of the types the format gives them; whether the op
    takes them (names, types, allowed values, required ones) is its declaration's to check.
    A subgraph is `graph(message, attribute name)`, or without `graph` a stand-in (when only
    the declaration is checked)."""
    attrs: dict[str, Any] = {}
    declared = get_op(node.op).attrs
    for a in node.attr:
        if a.name not in declared:
            raise _Fail(get_op(node.op).unknown_attribute(node.name, a.name))
        if a.name in attrs:
            raise _Fail(f"{at}: attribute {a.name!r} is given twice")
        if a.value.WhichOneof("value") == "index" and declared[a.name].type != "index":  # decodes as a tuple too
            raise _Fail(f"{node.name} ({node.op}): attribute {a.name!r} must be {declared[a.name].type} "
                        f"(AttrValue field ints), got field index")
        if a.value.WhichOneof("value") == "graph":
            attrs[a.name] = Subgraph() if graph is None else graph(a.value.graph, a.name)
        else:
            attrs[a.name] = _decode_attr(a.value, f"{at} attribute {a.name!r}")
    return attrs


def _decode_attr(msg: pb.AttrValue, at: str) -> Any:
    kind = msg.WhichOneof("value")
    if kind is None:
        raise _Fail(f"{at}: no value")
    if kind == "ints":
        return _decode_ints(msg.ints.item, at)
    if kind == "index":
        return tuple(_decode_index_item(it, at) for it in msg.index.item)
    return getattr(msg, kind)


def _decode_index_item(it: pb.IndexItem, at: str) -> Any:
    kind = it.WhichOneof("kind")
    if kind == "at":
        return it.at
    if kind == "slice":
        s = it.slice
        if s.HasField("step") and s.step == 0:
            raise _Fail(f"{at}: slice step 0")
        return slice(*(getattr(s, f) if s.HasField(f) else None for f in ("start", "stop", "step")))
    if kind == "new_axis" and it.new_axis:
        return None
    if kind == "ellipsis" and it.ellipsis:
        return Ellipsis
    raise _Fail(f"{at}: an index entry that is not an int, slice, None or ...")

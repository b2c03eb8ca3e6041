from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FormatVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORMAT_VERSION_UNSPECIFIED: _ClassVar[FormatVersion]
    FORMAT_VERSION_1: _ClassVar[FormatVersion]
    FORMAT_VERSION_2: _ClassVar[FormatVersion]
    FORMAT_VERSION_3: _ClassVar[FormatVersion]
    FORMAT_VERSION_4: _ClassVar[FormatVersion]

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_BOOL: _ClassVar[DataType]
    DATA_TYPE_TUPLE: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT16: _ClassVar[DataType]
    DATA_TYPE_INT8: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
FORMAT_VERSION_UNSPECIFIED: FormatVersion
FORMAT_VERSION_1: FormatVersion
FORMAT_VERSION_2: FormatVersion
FORMAT_VERSION_3: FormatVersion
FORMAT_VERSION_4: FormatVersion
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_BOOL: DataType
DATA_TYPE_TUPLE: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT16: DataType
DATA_TYPE_INT8: DataType
DATA_TYPE_UINT8: DataType

class Model(_message.Message):
    __slots__ = ("format_version", "min_reader_version", "producer_name", "producer_version", "metadata", "graph", "state", "padding", "footer")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_READER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    FOOTER_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    min_reader_version: int
    producer_name: str
    producer_version: str
    metadata: _containers.ScalarMap[str, str]
    graph: Graph
    state: _containers.RepeatedCompositeFieldContainer[Tensor]
    padding: bytes
    footer: Footer
    def __init__(self, format_version: _Optional[int] = ..., min_reader_version: _Optional[int] = ..., producer_name: _Optional[str] = ..., producer_version: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., graph: _Optional[_Union[Graph, _Mapping]] = ..., state: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., padding: _Optional[bytes] = ..., footer: _Optional[_Union[Footer, _Mapping]] = ...) -> None: ...

class Footer(_message.Message):
    __slots__ = ("magic", "message_length", "payload_length", "message_crc32")
    MAGIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_CRC32_FIELD_NUMBER: _ClassVar[int]
    magic: int
    message_length: int
    payload_length: int
    message_crc32: int
    def __init__(self, magic: _Optional[int] = ..., message_length: _Optional[int] = ..., payload_length: _Optional[int] = ..., message_crc32: _Optional[int] = ...) -> None: ...

class Graph(_message.Message):
    __slots__ = ("name", "node", "output")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    node: _containers.RepeatedCompositeFieldContainer[Node]
    output: _containers.RepeatedCompositeFieldContainer[Output]
    def __init__(self, name: _Optional[str] = ..., node: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., output: _Optional[_Iterable[_Union[Output, _Mapping]]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "op", "input", "attr", "dtype", "shape", "value", "trainable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    op: str
    input: _containers.RepeatedScalarFieldContainer[str]
    attr: _containers.RepeatedCompositeFieldContainer[Attribute]
    dtype: DataType
    shape: Shape
    value: Tensor
    trainable: bool
    def __init__(self, name: _Optional[str] = ..., op: _Optional[str] = ..., input: _Optional[_Iterable[str]] = ..., attr: _Optional[_Iterable[_Union[Attribute, _Mapping]]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Union[Shape, _Mapping]] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ..., trainable: _Optional[bool] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("name", "node")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    node: str
    def __init__(self, name: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class Shape(_message.Message):
    __slots__ = ("dim",)
    DIM_FIELD_NUMBER: _ClassVar[int]
    dim: _containers.RepeatedCompositeFieldContainer[OptionalInt]
    def __init__(self, dim: _Optional[_Iterable[_Union[OptionalInt, _Mapping]]] = ...) -> None: ...

class OptionalInt(_message.Message):
    __slots__ = ("value", "none")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    value: int
    none: bool
    def __init__(self, value: _Optional[int] = ..., none: _Optional[bool] = ...) -> None: ...

class Attribute(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: AttrValue
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[AttrValue, _Mapping]] = ...) -> None: ...

class AttrValue(_message.Message):
    __slots__ = ("i", "b", "s", "f", "ints", "index", "graph")
    I_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    i: int
    b: bool
    s: str
    f: float
    ints: IntTuple
    index: Index
    graph: Graph
    def __init__(self, i: _Optional[int] = ..., b: _Optional[bool] = ..., s: _Optional[str] = ..., f: _Optional[float] = ..., ints: _Optional[_Union[IntTuple, _Mapping]] = ..., index: _Optional[_Union[Index, _Mapping]] = ..., graph: _Optional[_Union[Graph, _Mapping]] = ...) -> None: ...

class IntTuple(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: _containers.RepeatedCompositeFieldContainer[OptionalInt]
    def __init__(self, item: _Optional[_Iterable[_Union[OptionalInt, _Mapping]]] = ...) -> None: ...

class Index(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: _containers.RepeatedCompositeFieldContainer[IndexItem]
    def __init__(self, item: _Optional[_Iterable[_Union[IndexItem, _Mapping]]] = ...) -> None: ...

class IndexItem(_message.Message):
    __slots__ = ("at", "slice", "new_axis", "ellipsis")
    AT_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    NEW_AXIS_FIELD_NUMBER: _ClassVar[int]
    ELLIPSIS_FIELD_NUMBER: _ClassVar[int]
    at: int
    slice: Slice
    new_axis: bool
    ellipsis: bool
    def __init__(self, at: _Optional[int] = ..., slice: _Optional[_Union[Slice, _Mapping]] = ..., new_axis: _Optional[bool] = ..., ellipsis: _Optional[bool] = ...) -> None: ...

class Slice(_message.Message):
    __slots__ = ("start", "stop", "step")
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    start: int
    stop: int
    step: int
    def __init__(self, start: _Optional[int] = ..., stop: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "dims", "raw_data", "payload")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    RAW_DATA_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    dims: _containers.RepeatedScalarFieldContainer[int]
    raw_data: bytes
    payload: PayloadRef
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., dims: _Optional[_Iterable[int]] = ..., raw_data: _Optional[bytes] = ..., payload: _Optional[_Union[PayloadRef, _Mapping]] = ...) -> None: ...

class PayloadRef(_message.Message):
    __slots__ = ("offset", "length", "crc32")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    crc32: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

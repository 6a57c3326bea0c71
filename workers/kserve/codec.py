"""KServe v2 tensors: datatypes, inference requests in, inference responses out.

JSON and Triton's binary tensor data extension. With the header
``Inference-Header-Content-Length: N`` the first N bytes of a body are the JSON document and
the rest the binary data of the tensors that declare ``parameters.binary_data_size``, one
after the other in tensor order: numbers little-endian and row-major, a BYTES element a
uint32 little-endian length followed by that many bytes.

Binary inputs become arrays over the request body itself (``np.frombuffer``, then a
reshape; copied only when misaligned for their type); JSON ``data`` (flattened or nested)
is converted once, to the model's type. Every malformed request is a ``RequestError``
(400), never a 500.
"""
from __future__ import annotations

import base64
import binascii
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from twinfer.errors import BodyTooLarge, RequestError, UnsupportedMediaType
from workers.client_numbers import client_int
from workers.kserve.json_budget import JsonBudget

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES = "BYTES"
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"),
        ("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"),
        ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"),
    )
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}
_LENGTH = struct.Struct("<I")


def datatype_of(dtype: np.dtype) -> str:
    """The v2 datatype of a numpy dtype (``ValueError`` for types the protocol lacks)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return BYTES
    name = _NAMES.get(dtype.newbyteorder("<"))
    if name is None:
        raise ValueError(f"numpy type {dtype} has no KServe v2 datatype")
    return name


def dims(shape: tuple[int | None, ...]) -> list[int]:
    """A signature shape as v2 metadata writes it: -1 for a dynamic dimension."""
    return [-1 if dim is None else int(dim) for dim in shape]


# --- requests ---------------------------------------------------------------------------------


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict
    data: Any = None  # the JSON ``data`` (flattened or nested), when not binary
    raw: memoryview | None = None  # its binary data, when ``parameters.binary_data_size`` is given

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferenceRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output, binary when ``binary_default``
    binary_default: bool  # the request's ``parameters.binary_data_output``
    parameters: dict


INFLATE_PIECE = 1 << 20  # bytes decompressed at a time, each counted before the next


def inflate(body: bytes, coding: str, limit: int, budget: JsonBudget, header_length: str | None) -> bytes:
    """A ``Content-Encoding: gzip|deflate`` body (tritonclient's request compression),
    decompressed to at most ``limit`` bytes: the body limit holds after decompression too.
    It is inflated a piece at a time and the JSON request's tokens counted as they come, so
    a 20 KB body of ``[],[],...`` is refused after its first piece, not its 20 MiB."""
    if coding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {coding!r} is not supported (gzip, deflate or identity)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS)
    json_end = limit if header_length is None else _header_length(header_length, limit)
    tally, pieces, size, pending = budget.tally(), [], 0, body
    try:
        while not inflater.eof:
            piece = inflater.decompress(pending, INFLATE_PIECE)
            pending = inflater.unconsumed_tail
            if not piece and not pending:
                break  # the data ended before the stream did
            if size + len(piece) > limit:
                raise BodyTooLarge(f"decompressed request body is over the limit of {limit} bytes")
            tally.add(piece, max(0, json_end - size))
            pieces.append(piece)
            size += len(piece)
    except zlib.error as exc:
        raise RequestError(f"body is not valid {coding} data ({exc})") from None
    if not inflater.eof or inflater.unused_data:
        raise RequestError(f"{coding} body is truncated or has trailing data")
    return b"".join(pieces)


def _header_length(raw: str, body_length: int) -> int:
    return client_int(raw, HEADER_LENGTH, 0, body_length, expected=f"a byte count within the {body_length}-byte body",
                      error=RequestError)


def _parameters(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{where}.parameters must be an object")
    return value


def _name(item: dict, where: str) -> str:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(f"{where}.name must be a non-empty string")
    return name


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise RequestError(f"input {name!r}: shape must be an array of non-negative integers, got {value!r}")
    return tuple(value)


def _flag(params: dict, key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"{where}.parameters.{key} must be true or false, got {value!r}")
    return value


def parse_request(body: bytes, header_length: str | None, budget: JsonBudget) -> InferenceRequest:
    """The inference request in ``body``: JSON alone, or (with ``Inference-Header-Content-Length``)
    a JSON header followed by the binary tensor data. Binary inputs are views of ``body``.
    The JSON is parsed only within ``budget`` (``workers.kserve.json_budget``)."""
    view = memoryview(body)
    split = len(body) if header_length is None else _header_length(header_length, len(body))
    head, binary = view[:split], view[split:]
    budget.check(body, split)
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON inference request: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("the inference request must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("id must be a string")
    parameters = _parameters(doc.get("parameters"), "request")
    binary_default = _flag(parameters, "binary_data_output", False, "request")

    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise RequestError("inputs must be a non-empty array of tensors")
    inputs: list[InputTensor] = []
    offset = 0
    for index, item in enumerate(items):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise RequestError(f"{where} must be an object")
        name = _name(item, where)
        if any(tensor.name == name for tensor in inputs):
            raise RequestError(f"input {name!r} is given twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or (datatype != BYTES and datatype not in DATATYPES):
            raise RequestError(f"input {name!r}: unknown datatype {datatype!r} (one of {', '.join([*DATATYPES, BYTES])})")
        shape = _shape(item.get("shape"), name)
        params = _parameters(item.get("parameters"), where)
        if "shared_memory_region" in params:
            raise RequestError(f"input {name!r}: shared memory is not supported; send the data in the body")
        tensor = InputTensor(name, datatype, shape, params)
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise RequestError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            if "data" in item:
                raise RequestError(f"input {name!r} has both data and binary_data_size")
            if header_length is None and size:
                raise RequestError(f"input {name!r} declares binary data but the request has no {HEADER_LENGTH} header")
            if offset + size > len(binary):
                raise RequestError(
                    f"input {name!r}: binary data up to byte {offset + size} declared, "
                    f"but only {len(binary)} bytes follow the JSON header"
                )
            tensor.raw = binary[offset : offset + size]
            offset += size
        elif "data" in item:
            tensor.data = item["data"]
        else:
            raise RequestError(f"input {name!r} has neither data nor parameters.binary_data_size")
        inputs.append(tensor)
    if offset != len(binary):
        raise RequestError(
            f"{len(binary) - offset} bytes after the JSON header belong to no input (the inputs' binary_data_size add up to {offset})"
        )

    outputs = None
    requested = doc.get("outputs")
    if requested is not None:
        if not isinstance(requested, list):
            raise RequestError("outputs must be an array")
        outputs = []
        for index, item in enumerate(requested):
            where = f"outputs[{index}]"
            if not isinstance(item, dict):
                raise RequestError(f"{where} must be an object")
            name = _name(item, where)
            if any(output.name == name for output in outputs):
                raise RequestError(f"output {name!r} is requested twice")
            params = _parameters(item.get("parameters"), where)
            for unsupported in ("classification", "shared_memory_region"):
                if unsupported in params:
                    raise RequestError(f"output {name!r}: {unsupported} is not supported")
            outputs.append(RequestedOutput(name, _flag(params, "binary_data", binary_default, where)))
        outputs = outputs or None  # an empty list asks for every output
    return InferenceRequest(request_id, inputs, outputs, binary_default, parameters)


def to_array(tensor: InputTensor) -> np.ndarray:
    """A numeric input as an array of its datatype and shape (checked against the data)."""
    dtype = DATATYPES[tensor.datatype]
    count = tensor.element_count
    if tensor.raw is not None:
        expected = count * dtype.itemsize
        if len(tensor.raw) != expected:
            raise RequestError(
                f"input {tensor.name!r}: binary_data_size is {len(tensor.raw)} bytes, "
                f"but {tensor.datatype} {list(tensor.shape)} takes {expected}"
            )
        array = np.frombuffer(tensor.raw, dtype=dtype).reshape(tensor.shape)
        # The engines read inputs in place; a tensor the JSON header left misaligned is copied once.
        return array if array.flags.aligned else array.copy()
    return _from_json(tensor, dtype, count)


_SOURCE_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}  # JSON value kinds each target kind takes
_EXPECTED = {"b": "true/false", "u": "integers", "i": "integers", "f": "numbers"}
_FOUND = {"b": "booleans", "u": "integers", "i": "integers", "f": "fractional numbers", "U": "strings"}


def _from_json(tensor: InputTensor, dtype: np.dtype, count: int) -> np.ndarray:
    if not isinstance(tensor.data, list):
        raise RequestError(f"input {tensor.name!r}: data must be an array")
    try:
        array = np.asarray(tensor.data)
    except (ValueError, TypeError):
        raise RequestError(f"input {tensor.name!r}: data is not a regular (flattened or nested) array") from None
    if array.size != count:
        raise RequestError(
            f"input {tensor.name!r}: data holds {array.size} elements, but shape {list(tensor.shape)} takes {count}"
        )
    if count and array.dtype.kind not in _SOURCE_KINDS[dtype.kind]:
        found = _FOUND.get(array.dtype.kind, "mixed values or nulls")
        raise RequestError(f"input {tensor.name!r}: {tensor.datatype} data must be {_EXPECTED[dtype.kind]}, got {found}")
    if count and dtype.kind in "iu":
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise RequestError(f"input {tensor.name!r}: values out of the {tensor.datatype} range")
    with np.errstate(over="ignore"):
        converted = array.astype(dtype, copy=False)
    if count and dtype.kind == "f" and not np.isfinite(converted).all():  # JSON numbers are finite: 1e39 -> inf in FP32
        raise RequestError(f"input {tensor.name!r}: values out of the {tensor.datatype} range")
    return converted.reshape(tensor.shape)


def split_bytes(raw: memoryview, name: str) -> list[memoryview]:
    """A binary BYTES tensor: (uint32 LE length, bytes) elements, as views of the body."""
    elements, offset, end = [], 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise RequestError(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise RequestError(f"input {name!r}: a BYTES element of {length} bytes runs past the end of its data")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def json_strings(tensor: InputTensor) -> list[str]:
    """The strings of a JSON BYTES tensor, nested arrays flattened (with a stack of its own:
    a client's nesting never becomes the interpreter's recursion)."""
    if not isinstance(tensor.data, list):
        raise RequestError(f"input {tensor.name!r}: data must be an array")
    strings: list[str] = []
    pending: list[Any] = [iter(tensor.data)]
    while pending:
        value = next(pending[-1], _END)
        if value is _END:
            pending.pop()
        elif isinstance(value, list):
            pending.append(iter(value))
        elif isinstance(value, str):
            strings.append(value)
        else:
            raise RequestError(f"input {tensor.name!r}: BYTES data in JSON must be strings, got {type(value).__name__}")
    return strings


_END = object()


def decode_base64(text: str, name: str) -> bytes:
    """Standard base64, whitespace (line breaks) allowed, nothing else."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            f"input {name!r}: the JSON string is not valid base64; send the bytes base64-encoded, "
            "or as binary data (binary tensor data extension)"
        ) from None


# --- responses --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTensor:
    """A numeric output (``array``) or a BYTES one (``elements``)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    elements: tuple[bytes, ...] = ()

    @staticmethod
    def of_array(name: str, array: np.ndarray) -> "OutputTensor":
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        return OutputTensor(name, datatype_of(array.dtype), tuple(array.shape), array=array)

    @staticmethod
    def of_bytes(name: str, elements: list[bytes]) -> "OutputTensor":
        return OutputTensor(name, BYTES, (len(elements),), elements=tuple(elements))

    def binary(self) -> list:
        """Its binary data, as buffers (no copy of a numeric array)."""
        if self.array is not None:
            return [memoryview(self.array.reshape(-1).view(np.uint8))]
        parts = []
        for element in self.elements:
            parts += [_LENGTH.pack(len(element)), element]
        return parts

    def json_data(self):
        if self.array is not None:
            return self.array.reshape(-1)  # orjson writes numpy arrays natively
        try:
            return [element.decode("utf-8") for element in self.elements]
        except UnicodeDecodeError:
            raise RequestError(f"output {self.name!r} is not UTF-8 text; request it with binary_data") from None


def encode_response(head: dict, outputs: list[tuple[OutputTensor, bool]]) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, its JSON header length (for the
    ``Inference-Header-Content-Length`` response header). ``head``: model_name, model_version, id."""
    entries, chunks = [], []
    for output, binary in outputs:
        entry: dict = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if binary:
            parts = output.binary()
            entry["parameters"] = {"binary_data_size": sum(memoryview(p).nbytes for p in parts)}
            chunks += parts
        else:
            entry["data"] = output.json_data()
        entries.append(entry)
    header = orjson.dumps({**head, "outputs": entries}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)

"""Tiny real .tflite models, written with the flatbuffer schema LiteRT ships.

No TensorFlow needed: the graph is three builtin ops, so a test can have a TFLite model
of any output shape whose output it knows exactly.
"""
from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema


def constant_output_tflite(planted: np.ndarray, input_shape: tuple[int, ...]) -> bytes:
    """A float32 model whose output is ``planted`` whatever its input (which still feeds
    the graph: output = planted + mean(input) * 0)."""
    buffers = [schema.BufferT()]  # buffer 0: no data, by convention

    def constant(array: np.ndarray) -> int:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(array.tobytes(), np.uint8).tolist()
        buffers.append(buffer)
        return len(buffers) - 1

    def tensor(shape: tuple[int, ...], kind: int, buffer: int, name: str) -> schema.TensorT:
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = list(shape), kind, buffer, name
        return t

    f32, i32 = schema.TensorType.FLOAT32, schema.TensorType.INT32
    axes = np.arange(1, len(input_shape), dtype=np.int32)
    tensors = [
        tensor(input_shape, f32, 0, "images"),
        tensor(axes.shape, i32, constant(axes), "axes"),
        tensor((1,), f32, 0, "mean"),
        tensor((1,), f32, constant(np.zeros(1, np.float32)), "zero"),
        tensor((1,), f32, 0, "nothing"),
        tensor(planted.shape, f32, constant(planted.astype(np.float32)), "planted"),
        tensor(planted.shape, f32, 0, "output0"),
    ]
    codes = []
    for op in (schema.BuiltinOperator.MEAN, schema.BuiltinOperator.MUL, schema.BuiltinOperator.ADD):
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = op
        code.version = 1
        codes.append(code)

    def operator(code: int, inputs: list[int], outputs: list[int], kind: int, options) -> schema.OperatorT:
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs, o.builtinOptionsType, o.builtinOptions = code, inputs, outputs, kind, options
        return o

    reducer = schema.ReducerOptionsT()
    reducer.keepDims = False
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.name = tensors, [0], [6], "main"
    graph.operators = [
        operator(0, [0, 1], [2], schema.BuiltinOptions.ReducerOptions, reducer),
        operator(1, [2, 3], [4], schema.BuiltinOptions.MulOptions, schema.MulOptionsT()),
        operator(2, [5, 4], [6], schema.BuiltinOptions.AddOptions, schema.AddOptionsT()),
    ]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [graph], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())

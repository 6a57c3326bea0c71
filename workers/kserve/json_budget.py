"""How many JSON values, arrays, objects and strings an inference request may hold, decided
from the model's inputs and checked before the JSON is parsed.

Why before: the JSON parser builds a Python object for every value, and the cheapest
tokens cost the most. ``[],`` is 3 bytes of body and a 64-byte list, ``{},`` a 232-byte
dict: a 20 MiB body of them (20 KB gzipped) grew a worker by over 700 MB before the shape
check refused it, and four at once took it past its container's memory. The model's
input shapes say how much a real request holds, so the request's tokens are counted first
(``bytes.count``: C speed, nothing allocated) and a request with more is refused unparsed.

Counting bytes over-counts (a ``[`` inside a string counts as an array), which only makes
the check stricter for text, and ``ALLOWANCE`` leaves room for the envelope: ids, names,
shapes, parameters, the image way in's one base64 string. An input with a dynamic
dimension can hold as many values as the body can carry, so for it the bound is the body's
(each value takes at least two bytes, a digit and a separator).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from twinfer.errors import JsonTooComplex
from twinfer.signature import TensorInfo

ALLOWANCE = 1024  # tokens of the request's envelope, beyond its tensors' data


@dataclass(frozen=True)
class JsonBudget:
    values: int  # separators (",") a request of this model needs at most
    containers: int  # arrays and objects ("[" and "{")
    strings: int  # quotes ('"')

    @staticmethod
    def for_inputs(inputs: Iterable[TensorInfo], max_body_bytes: int) -> "JsonBudget":
        values = containers = strings = 0
        for tensor in inputs:
            elements, arrays = _tokens(tensor.shape, max_body_bytes)
            values += elements + arrays
            containers += arrays
            if tensor.dtype.kind in "OSU":  # a string tensor: one JSON string per element
                strings += elements
        return JsonBudget(values + ALLOWANCE, containers + ALLOWANCE, 2 * (strings + ALLOWANCE))

    def check(self, body: bytes, end: int) -> None:
        """``JsonTooComplex`` when ``body[:end]`` (the JSON request) holds more than the model needs."""
        self.tally().add(body, end)

    def tally(self) -> "JsonTally":
        """A running count for a request that arrives in pieces (a body being decompressed)."""
        return JsonTally(self)


class JsonTally:
    """The tokens of the pieces seen so far, against a budget."""

    def __init__(self, budget: JsonBudget) -> None:
        self._budget = budget
        self._values = self._containers = self._quotes = 0

    def add(self, piece: bytes, end: int) -> None:
        """Count ``piece[:end]``; ``JsonTooComplex`` as soon as the request holds more than its budget."""
        self._values += piece.count(b",", 0, end)
        self._containers += piece.count(b"[", 0, end) + piece.count(b"{", 0, end)
        self._quotes += piece.count(b'"', 0, end)
        budget = self._budget
        for what, found, allowed in (("values", self._values, budget.values),
                                     ("arrays and objects", self._containers, budget.containers),
                                     ("strings", self._quotes // 2, budget.strings // 2)):
            if found > allowed:
                raise JsonTooComplex(
                    f"the JSON request holds {found} {what} or more, more than this model's inputs take ({allowed}); "
                    "send the tensors with the shapes of GET /v2/models/{name}, or as binary data"
                )


def _tokens(shape: tuple[int | None, ...], max_body_bytes: int) -> tuple[int, int]:
    """The most values and nested arrays a JSON tensor of ``shape`` holds (row-major nesting)."""
    if any(dim is None for dim in shape):
        most = max_body_bytes // 2
        return most, most
    elements = math.prod(shape)
    arrays = sum(math.prod(shape[:depth]) for depth in range(len(shape)))  # one array per prefix index
    return elements, arrays

"""The JSON token budget of an inference request: what a real request of the model holds
passes, a flood of cheap tokens is refused before it is parsed."""
from __future__ import annotations

import json

import numpy as np
import pytest

from twinfer.errors import JsonTooComplex
from twinfer.signature import TensorInfo
from workers.kserve.json_budget import ALLOWANCE, JsonBudget

IMAGE = TensorInfo("image", (1, 8, 8, 3), np.dtype(np.float32))
BODY = 20 * 1024 * 1024


def _request(data: object, shape: list[int], name: str = "image", datatype: str = "FP32") -> bytes:
    return json.dumps({"id": "a, [b] {c}", "inputs": [
        {"name": name, "datatype": datatype, "shape": shape, "data": data}]}).encode()


def _check(budget: JsonBudget, body: bytes) -> None:
    budget.check(body, len(body))


@pytest.mark.parametrize("nested", [True, False])
def test_a_full_tensor_nested_or_flattened_fits(nested):
    values = np.zeros((1, 8, 8, 3))
    data = values.tolist() if nested else values.ravel().tolist()
    _check(JsonBudget.for_inputs([IMAGE], BODY), _request(data, [1, 8, 8, 3]))


def test_the_budget_counts_every_nested_array_of_the_shape():
    budget = JsonBudget.for_inputs([IMAGE], BODY)
    assert budget.containers == 1 + 1 + 8 + 64 + ALLOWANCE
    assert budget.values == 192 + 74 + ALLOWANCE


@pytest.mark.parametrize("flood", [b"[],", b"{},", b"0,", b'"",'])
def test_a_flood_of_cheap_tokens_is_refused_before_parsing(flood):
    body = b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [' + flood * 5000 + b"0]}]}"
    with pytest.raises(JsonTooComplex, match="more than this model's inputs take") as raised:
        _check(JsonBudget.for_inputs([IMAGE], BODY), body)
    assert raised.value.status == 413


def test_only_the_json_head_is_counted_not_the_binary_data_after_it():
    head = _request(None, [1, 8, 8, 3])
    body = head + b"[],{}," * 10000  # binary tensor bytes may hold any byte values
    JsonBudget.for_inputs([IMAGE], BODY).check(body, len(head))
    with pytest.raises(JsonTooComplex):
        _check(JsonBudget.for_inputs([IMAGE], BODY), body)


def test_a_dynamic_dimension_is_bounded_by_the_body_size():
    dynamic = TensorInfo("x", (None, 4), np.dtype(np.float32))
    budget = JsonBudget.for_inputs([dynamic], 1000)
    assert budget.values == 1000 + ALLOWANCE  # 500 values and 500 arrays at two bytes each
    _check(budget, _request(np.zeros((100, 4)).tolist(), [100, 4], name="x"))


def test_a_string_tensor_may_hold_one_string_per_element():
    text = TensorInfo("text", (1, 3000), np.dtype(object))
    body = _request(["word"] * 3000, [1, 3000], name="text", datatype="BYTES")
    _check(JsonBudget.for_inputs([text], BODY), body)
    with pytest.raises(JsonTooComplex):
        _check(JsonBudget.for_inputs([IMAGE], BODY), body)


def test_strings_are_counted_on_their_own():
    budget = JsonBudget(values=10**6, containers=10**6, strings=2 * 101)  # the key "a" and 100 elements
    _check(budget, b'{"a": [' + b'"x" ' * 100 + b"]}")
    with pytest.raises(JsonTooComplex, match="strings"):
        _check(budget, b'{"a": [' + b'"x" ' * 101 + b"]}")

"""Every number a client sends (query strings, headers, KServe v2 parameters), parsed here.

Python's ``str.isdigit()``, ``int()`` and ``float()`` accept Unicode digits ('²' passes
``isdigit`` and then fails ``int``: a 500; '١' is taken as 1), underscores and
thousands of digits. A client's number is plain ASCII within its bounds, or a 400 that
names the field as the client wrote it.
"""
from __future__ import annotations

import math
import re

from twinfer.errors import BadParameter, RequestError

_INT_TEXT = re.compile(r"[0-9]{1,18}")  # no sign, no spaces, no int() of a 10,000-digit string
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})(?:[eE][+-]?[0-9]{1,3})?")


def client_int(
    raw: object, field: str, minimum: int, maximum: int, expected: str | None = None,
    error: type[RequestError] = BadParameter,
) -> int:
    """ASCII digits or a JSON integer (not a bool, not 2.0) in ``minimum..maximum``."""
    expected = expected or f"an integer {minimum}..{maximum}"
    if isinstance(raw, str) and _INT_TEXT.fullmatch(raw.strip()):
        value: object = int(raw.strip())
    else:
        value = raw
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise error(f"{field} must be {expected}, got {raw!r}")
    return value


def client_float(raw: object, field: str, minimum: float, maximum: float, error: type[RequestError] = BadParameter) -> float:
    """An ASCII decimal number or a JSON number (not a bool) in ``minimum..maximum``."""
    if isinstance(raw, str) and _FLOAT_TEXT.fullmatch(raw.strip()):
        value = float(raw.strip())
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    else:
        raise error(f"{field} must be a number between {minimum:g} and {maximum:g}, got {raw!r}")
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise error(f"{field} must be between {minimum:g} and {maximum:g}, got {value}")
    return value

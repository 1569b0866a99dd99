"""JSON from peers, decoded with a nesting limit (the decoder would otherwise recurse as deep as
the text goes) and never raising anything but :class:`ValueError`."""

from __future__ import annotations

import json
import re

MAX_DEPTH = 16

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (brackets inside strings do not count)."""
    depth = deepest = 0
    # the brackets alone, by regular expressions (C), then a walk over those few characters
    for bracket in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> object:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if nesting_depth(text) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None


def number(value: object) -> float:
    """A JSON number as a float, 0 for anything else (a peer's summary may lack a field)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

"""JSON from peers, with a limit on how deep it nests, and never raising anything but
:class:`ValueError`."""

from __future__ import annotations

import json

MAX_DEPTH = 16


def nesting_depth(value: object) -> int:
    """How deep arrays and objects nest in a decoded value (a scalar: 0)."""
    if not isinstance(value, (dict, list)):
        return 0
    deepest = 0
    pending = [(value, 1)]
    while pending:
        container, level = pending.pop()
        deepest = max(deepest, level)
        for child in container.values() if isinstance(container, dict) else container:
            if isinstance(child, (dict, list)):
                pending.append((child, level + 1))
    return deepest


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> object:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        # the C decoder guards its own recursion (RecursionError), so decoding first is safe
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    _check_depth(value, text, 0, len(text), max_depth)
    return value


def _check_depth(value: object, text: str, start: int, end: int, max_depth: int) -> None:
    """ValueError when ``value``, decoded from ``text[start:end]``, nests deeper than ``max_depth``."""
    # counting brackets (a few hundred ns) spares the walk for the usual shallow record; brackets
    # in strings only make the count larger, never smaller
    if text.count("[", start, end) + text.count("{", start, end) > max_depth and nesting_depth(value) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")


_DECODER = json.JSONDecoder()


def decode_at(text: str, index: int, max_depth: int = MAX_DEPTH) -> tuple[object, int]:
    """The JSON value that starts at ``text[index]`` (no whitespace before it), and the index
    after it: a long text read one value at a time. ValueError as :func:`loads`."""
    try:
        value, end = _DECODER.raw_decode(text, index)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    _check_depth(value, text, index, end, max_depth)
    return value, end


def number(value: object) -> float:
    """A JSON number as a float, 0 for anything else (a peer's summary may lack a field)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

"""RADIUS dictionaries as the proxy's RADIUS client has them, made readable for pyrad.

The dictionary a Debian operator's ``radiusclient.conf`` names is radcli's
(``/etc/radcli/dictionary``): its types (``ipv4addr``, ``integer64``, ``uint32``, ...) are not
all pyrad's, and pyrad stops at the first it does not know. The files are read here, their
``$INCLUDE`` lines followed (relative to the including file, as radcli and FreeRADIUS do), and
each type written as the pyrad type that encodes it alike; a type with no pyrad counterpart
becomes ``octets`` (MediaProxy sends none of those: they only need to parse). pyrad then reads
the one translated text.
"""

from __future__ import annotations

import io
import os

# radcli / FreeRADIUS type → pyrad type (pyrad 2.1, Debian bookworm's, and later)
TYPES = {
    "ipv4addr": "ipaddr",
    "ipaddr": "ipaddr",
    "string": "string",
    "text": "string",
    "integer": "integer",
    "uint32": "integer",
    "date": "date",
    "time": "date",
    "octets": "octets",
    "ipv6addr": "ipv6addr",
    "ipv6prefix": "ipv6prefix",
    "short": "short",
    "uint16": "short",
    "byte": "byte",
    "uint8": "byte",
    "signed": "signed",
    "int32": "signed",
    "ifid": "ifid",
    "ether": "ether",
    "abinary": "abinary",
}
FALLBACK_TYPE = "octets"
MAX_DEPTH = 8  # nested $INCLUDEs
MAX_LINES = 200_000  # all files together: a loop of includes stops here


class DictionaryError(ValueError):
    """Names the file (and line) that cannot be read."""


def translated(path: str) -> io.StringIO:
    """The dictionary at ``path`` with its includes, as one text pyrad can parse."""
    lines: list[str] = []
    _read(os.path.abspath(path), lines, 0, ())
    return io.StringIO("".join(lines))


def _read(path: str, lines: list[str], depth: int, including: tuple[str, ...]) -> None:
    if depth > MAX_DEPTH:
        raise DictionaryError(f"{path}: $INCLUDE nested more than {MAX_DEPTH} deep (from {including[-1]})")
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError as error:
        where = f" (included from {including[-1]})" if including else ""
        raise DictionaryError(f"cannot read {path}{where}: {error.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if len(lines) >= MAX_LINES:
            raise DictionaryError(f"{path}: the dictionaries have more than {MAX_LINES} lines")
        fields = line.split("#", 1)[0].split()
        if fields and fields[0] in ("$INCLUDE", "$INCLUDE-"):
            _include(path, number, fields, lines, depth, including)
        elif fields:
            lines.append("\t".join(_translated(fields)) + "\n")


def _include(path: str, number: int, fields: list[str], lines: list[str], depth: int, including: tuple[str, ...]) -> None:
    if len(fields) < 2:
        raise DictionaryError(f"{path}:{number}: $INCLUDE without a file")
    target = fields[1] if os.path.isabs(fields[1]) else os.path.join(os.path.dirname(path), fields[1])
    if fields[0] == "$INCLUDE-" and not os.path.exists(target):
        return  # FreeRADIUS's optional include
    _read(os.path.normpath(target), lines, depth + 1, (*including, f"{path}:{number}"))


def _translated(fields: list[str]) -> list[str]:
    if fields[0] == "ATTRIBUTE" and len(fields) >= 4:
        fields[3] = TYPES.get(fields[3].lower(), FALLBACK_TYPE)
    return fields

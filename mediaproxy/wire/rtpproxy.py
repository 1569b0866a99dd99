"""The rtpproxy control protocol as Kamailio's and OpenSIPS' ``rtpproxy`` module speaks it.

Over UDP a command is one datagram, ``<cookie> <command>``, and its reply ``<cookie> <reply>\\n``;
over a UNIX stream socket the command comes alone on its connection, without a cookie. Only
what the module sends is accepted (``V``, ``VF``, ``U``, ``L``, ``D``, ``Q``); anything else is
refused with the protocol's own error form, ``E<code>``, and a reason for the log.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mediaproxy.datatypes import ascii_decimal
from mediaproxy.wire.headers import MAX_MEDIA_STREAMS

# the one version the module accepts, and the capability dates it asks about
PROTOCOL_VERSION = "20040107"
CAPABILITIES = {
    "20040107": True,  # the basic protocol
    "20050322": True,  # the ;N media numbers on tags (the module requires it)
    "20060704": False,  # remote-address comparisons (R): not offered
    "20071116": True,  # re-packetization (Z): accepted, the relay forwards packets as they come
    "20071218": False,  # copying media to a file (R/C): not offered
    "20081102": True,  # the codec list in U/L (c)
    "20081224": False,  # call statistics in Q with more fields: not offered
    "20090810": False,  # weak sessions (W): not offered
}

# rtpproxy's error codes (sippy/rtpproxy rtpp_command_ecodes.h)
SYNTAX = 1  # a command that cannot be parsed
SOFTWARE = 7  # the relay could not do it (no relay, a relay error)
NO_SESSION = 8  # L, D or Q for a call not known

MAX_DATAGRAM = 4096  # Kamailio's commands are well under 300 bytes
MAX_TOKEN = 255  # a call-id or tag longer than this is not from a SIP proxy
_FLAGS = set("AS6IE")  # modifiers taken: asymmetric, symmetric, IPv6, bridge interfaces (one relay address here)


class CommandError(ValueError):
    """A command refused; ``code`` is its rtpproxy error code, the text says why for the log."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class Tag:
    value: str
    medianum: int  # 1-based m= line number; 1 when the module sent none


@dataclass(frozen=True)
class Command:
    kind: str  # V, VF, U, L, D, Q
    argument: str = ""  # VF's date
    modifiers: frozenset = frozenset()
    codecs: tuple = ()
    repacketize: int | None = None
    call_id: str = ""
    address: str = ""
    port: int = 0
    from_tag: Tag | None = None
    to_tag: Tag | None = None
    extra: tuple = field(default=())  # the timeout socket Kamailio may append to U

    @property
    def asymmetric(self) -> bool:
        return "A" in self.modifiers


def split_cookie(datagram: bytes) -> tuple[str, str]:
    """``<cookie> <command>`` into both; CommandError when there is no command after the cookie
    (the cookie is then still answered, so the module's retransmissions stop)."""
    if len(datagram) > MAX_DATAGRAM:
        raise CommandError(SYNTAX, f"a datagram of {len(datagram)} bytes")
    text = _text(datagram).rstrip("\r\n")
    cookie, _, command = text.partition(" ")
    if not cookie:
        raise CommandError(SYNTAX, "a datagram without a cookie")
    return cookie, command


def _text(data: bytes) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise CommandError(SYNTAX, "a command that is not ASCII") from None


def parse(text: str) -> Command:
    """One command's text (without the cookie); CommandError naming the problem."""
    words = text.split()
    if not words:
        raise CommandError(SYNTAX, "an empty command")
    head, arguments = words[0], words[1:]
    kind = head[:2].upper() if head[:2].upper() == "VF" else head[:1].upper()
    if kind in ("V", "VF"):
        return _version(kind, head, arguments, text)
    if kind in ("U", "L"):
        return _update(kind, head[1:], arguments, text)
    if kind in ("D", "Q"):
        return _delete_or_query(kind, head[1:], arguments, text)
    raise CommandError(SYNTAX, f"command {_show(head)} is not one the rtpproxy module sends (V, VF, U, L, D, Q)")


def _version(kind: str, head: str, arguments: list[str], text: str) -> Command:
    if kind == "V":
        if head.upper() != "V" or arguments:
            raise CommandError(SYNTAX, f"version query {_show(text)} has extra words")
        return Command("V")
    if head.upper() != "VF" or len(arguments) != 1:
        raise CommandError(SYNTAX, f"capability query {_show(text)} is not 'VF <date>'")
    return Command("VF", argument=arguments[0])


def _update(kind: str, modifiers: str, arguments: list[str], text: str) -> Command:
    minimum = 4 if kind == "U" else 5
    if not minimum <= len(arguments) <= 6:
        raise CommandError(SYNTAX, f"{kind} command {_show(text)} has {len(arguments)} arguments")
    flags, codecs, repacketize = _modifiers(modifiers)
    call_id, address, port_text, from_text = arguments[:4]
    port = ascii_decimal(port_text, max_digits=5)
    if port is None or port > 65535:
        raise CommandError(SYNTAX, f"port {_show(port_text)} is not a port number")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise CommandError(SYNTAX, f"address {_show(address)} is not an IP address") from None
    if parsed.version == 6 and "6" not in flags:
        raise CommandError(SYNTAX, f"IPv6 address {_show(address)} without the 6 modifier")
    to_tag = _tag(arguments[4]) if len(arguments) > 4 else None
    return Command(
        kind,
        modifiers=frozenset(flags),
        codecs=codecs,
        repacketize=repacketize,
        call_id=_token(call_id, "call-id"),
        address=str(parsed),
        port=port,
        from_tag=_tag(from_text),
        to_tag=to_tag,
        extra=tuple(arguments[5:]),
    )


def _delete_or_query(kind: str, modifiers: str, arguments: list[str], text: str) -> Command:
    if modifiers.strip("wW"):
        raise CommandError(SYNTAX, f"{kind} command {_show(text)} has modifiers {_show(modifiers)}")
    if not 2 <= len(arguments) <= 3:
        raise CommandError(SYNTAX, f"{kind} command {_show(text)} is not '{kind} <call-id> <from-tag> [<to-tag>]'")
    return Command(
        kind,
        call_id=_token(arguments[0], "call-id"),
        from_tag=_tag(arguments[1]),
        to_tag=_tag(arguments[2]) if len(arguments) > 2 else None,
    )


def _modifiers(text: str) -> tuple[set[str], tuple[int, ...], int | None]:
    flags: set[str] = set()
    codecs: tuple[int, ...] = ()
    repacketize = None
    index = 0
    while index < len(text):
        letter = text[index].upper()
        index += 1
        if letter in _FLAGS:
            flags.add(letter)
        elif letter == "Z":
            value, index = _digits(text, index, ",")
            repacketize = _milliseconds(value, text)
        elif letter == "C":
            value, index = _digits(text, index)
            codecs = _payload_types(value)
        else:
            raise CommandError(SYNTAX, f"modifier {_show(letter)} is not supported (A, S, I, E, 6, Z, c)")
    if "A" in flags and "S" in flags:
        raise CommandError(SYNTAX, "both asymmetric (A) and symmetric (S)")
    return flags, codecs, repacketize


def _digits(text: str, start: int, stop_at: str = "") -> tuple[str, int]:
    """A modifier's value: the digits (and commas, unless ``stop_at`` names them) from ``start``."""
    end = start
    while end < len(text) and (text[end].isdigit() or (text[end] == "," and "," not in stop_at)):
        end += 1
    return text[start:end], end


def _milliseconds(value: str, text: str) -> int:
    repacketize = ascii_decimal(value, max_digits=5)
    if repacketize is None:
        raise CommandError(SYNTAX, f"Z modifier without milliseconds in {_show(text)}")
    return repacketize


def _payload_types(value: str) -> tuple[int, ...]:
    numbers = [ascii_decimal(number, max_digits=3) for number in value.split(",")]
    if not value or any(number is None or number > 127 for number in numbers):
        raise CommandError(SYNTAX, f"codec list {_show(value)} is not payload types")
    return tuple(numbers)


def _tag(text: str) -> Tag:
    value, sep, number = text.partition(";")
    medianum = 1
    if sep:
        parsed = ascii_decimal(number, max_digits=3)
        if parsed is None or not 1 <= parsed <= MAX_MEDIA_STREAMS:
            raise CommandError(SYNTAX, f"media number {_show(number)} of tag {_show(value)} is not 1 to {MAX_MEDIA_STREAMS}")
        medianum = parsed
    return Tag(_token(value, "tag"), medianum)


def _token(text: str, what: str) -> str:
    if not text or len(text) > MAX_TOKEN:
        raise CommandError(SYNTAX, f"{what} {_show(text)} is empty or longer than {MAX_TOKEN} characters")
    return text


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# -- replies


def capability(date: str) -> str:
    return "1" if CAPABILITIES.get(date) else "0"


def address_reply(port: int, address: str) -> str:
    """U/L's reply: the relay's port and address, with `` 6`` for IPv6 (what the module reads)."""
    return f"{port} {address} 6" if ":" in address else f"{port} {address}"


def error(code: int) -> str:
    return f"E{code}"


def framed(cookie: str | None, reply: str) -> bytes:
    """The reply as it goes out: after the cookie over UDP, alone over a UNIX socket."""
    return (f"{cookie} {reply}\n" if cookie is not None else f"{reply}\n").encode("ascii")

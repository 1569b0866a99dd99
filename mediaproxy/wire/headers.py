"""The header lines of ``update`` and ``remove``: one parser for the dispatcher and the relay.

The dispatcher validates a request with :func:`decode` before it forwards the very same lines,
and the relay decodes them with the same function, so the two can never read a request
differently (a duplicate header, say, is an error on both, never "first wins" on one side and
"last wins" on the other).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mediaproxy.datatypes import ascii_decimal
from mediaproxy.wire import jsontext

COMMANDS = ("update", "remove")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
UPDATE_REQUIRED = ("call_id", "from_tag", "from_uri", "to_uri", "cseq", "user_agent", "type", "signaling_ip")
REMOVE_REQUIRED = ("call_id", "from_tag")
REQUIRED = {"update": UPDATE_REQUIRED, "remove": REMOVE_REQUIRED}
MAX_CSEQ = 2**32 - 1  # RFC 3261: a 32-bit unsigned integer
# a call has a handful of streams; every one costs the relay four sockets
MAX_MEDIA_STREAMS = 16


class HeaderError(ValueError):
    """The text names the header and what is wrong with it, for the one log line."""


@dataclass(frozen=True)
class MediaEntry:
    media_type: str
    ip: str
    port: int
    direction: str
    parameters: dict = field(default_factory=dict, hash=False, compare=True)

    @property
    def uses_ice(self) -> bool:
        return self.parameters.get("ice") == "yes"

    @property
    def on_hold(self) -> bool:
        return self.direction in ("sendonly", "inactive") or self.ip == "0.0.0.0"

    @property
    def asymmetric(self) -> bool:
        """The party does not send from where it receives (rtpproxy's ``A``): media goes to its SDP address."""
        return self.parameters.get("asymmetric") == "yes"


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def ascii_number(text: str, what: str, maximum: int) -> int:
    """A decimal number of ASCII digits only, at most ``maximum``."""
    value = ascii_decimal(text, max_digits=10)
    if value is None:
        raise HeaderError(f"{what} {_show(text)} is not a decimal number")
    if value > maximum:
        raise HeaderError(f"{what} {value} is above {maximum}")
    return value


# the words a media element repeats call after call, held once (a relay keeps them per stream)
_WORDS = {
    word: word for word in ("audio", "video", "image", "text", "application", "message", "sendrecv", "sendonly", "recvonly", "inactive")
}


def parse_media(value: str) -> list[MediaEntry]:
    """``type:ip:port:direction[:key=value...]``, comma-separated; empty elements are skipped."""
    entries = []
    for element in value.split(","):
        element = element.strip()
        if not element:
            continue
        parts = element.split(":")
        if len(parts) < 4:
            raise HeaderError(f"media stream {_show(element)} has fewer than 4 fields (type:ip:port:direction)")
        media_type, ip, port_text, direction = parts[:4]
        if not media_type or not ip:
            raise HeaderError(f"media stream {_show(element)} has an empty type or address")
        port = ascii_number(port_text, f"media stream {_show(element)} port", 65535)
        parameters = {}
        for parameter in parts[4:]:
            if not parameter:
                continue
            key, sep, item = parameter.partition("=")
            if not sep:
                raise HeaderError(f"media parameter {_show(parameter)} has no '='")
            parameters[key] = item
        entries.append(MediaEntry(_WORDS.get(media_type, media_type), ip, port, _WORDS.get(direction, direction), parameters))
        if len(entries) > MAX_MEDIA_STREAMS:
            raise HeaderError(f"media has more than {MAX_MEDIA_STREAMS} streams")
    return entries


@dataclass(frozen=True, slots=True)  # one per relay session
class SignalingInfo:
    caller_ip: str | None
    destination_ip: str | None = None
    username: str | None = None


# values seen lately (a proxy sends its few addresses call after call): checking an address is
# the costliest part of decoding an update; bounded, as a value may be anything a peer sends
_SIGNALING_SEEN: dict[str, SignalingInfo] = {}
_SIGNALING_SEEN_MAX = 4096


def parse_signaling_ip(value: str) -> SignalingInfo:
    """The three forms of ``signaling_ip``: a JSON object, ``SRC_DST``, or a plain IP. Every
    address in it must be an IP address (the relay trusts media from it, see latching)."""
    known = _SIGNALING_SEEN.get(value)
    if known is not None:
        return known
    parsed = _parse_signaling_ip(value)
    if len(_SIGNALING_SEEN) >= _SIGNALING_SEEN_MAX:
        _SIGNALING_SEEN.clear()
    _SIGNALING_SEEN[value] = parsed
    return parsed


def _parse_signaling_ip(value: str) -> SignalingInfo:
    if value.startswith("{"):
        try:
            decoded = jsontext.loads(value, max_depth=2)
        except ValueError as error:
            raise HeaderError(f"signaling_ip {_show(value)} is not valid JSON: {error}") from None
        if not isinstance(decoded, dict):
            raise HeaderError(f"signaling_ip {_show(value)} is not a JSON object")
        return SignalingInfo(
            _address(decoded.get("signaling_ip"), "signaling_ip"),
            _address(decoded.get("destination_ip"), "destination_ip"),
            _string(decoded.get("username")),
        )
    parts = value.split("_")
    if len(parts) == 2:
        return SignalingInfo(_address(parts[0], "signaling_ip"), _address(parts[1], "signaling_ip"))
    return SignalingInfo(_address(value, "signaling_ip"))


def _address(value: object, what: str) -> str | None:
    """An IPv4 or IPv6 address in its usual text (``None`` stays None: the key is optional)."""
    if value is None:
        return None
    text = _string(value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise HeaderError(f"{what} {_show(text)} is not an IP address") from None


def _string(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise HeaderError("signaling_ip has a nested value where a string belongs")
    return str(value)


def parse_cseq(value: str) -> int:
    return ascii_number(value, "cseq", MAX_CSEQ)


def parse_type(value: str) -> str:
    if value not in ("request", "reply"):
        raise HeaderError(f"type {_show(value)} is neither 'request' nor 'reply'")
    return value


# each decoded once, where the request is read: the model takes the typed values
DECODERS = {"media": parse_media, "cseq": parse_cseq, "type": parse_type, "signaling_ip": parse_signaling_ip}


def split(lines: list[str]) -> dict[str, str]:
    """``name: value`` lines into a dict; a line without the separator or a repeated name is an error."""
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(": ")
        if not sep or not name:
            raise HeaderError(f"header line {_show(line)} has no 'name: value' form")
        if name in headers:
            raise HeaderError(f"header {_show(name)} appears twice")
        headers[name] = value
    return headers


def decode(command: str, lines: list[str]) -> dict:
    """Split, check and decode the headers of ``update`` or ``remove``; HeaderError on any problem."""
    required = REQUIRED.get(command)
    if required is None:
        raise HeaderError(f"command {_show(command)} is neither update nor remove")
    headers = split(lines)
    missing = [name for name in required if not headers.get(name)]
    if missing:
        raise HeaderError(f"{command} without " + ", ".join(missing))
    return typed(headers)


def typed(headers: dict[str, str]) -> dict:
    """The typed headers decoded (media, cseq, type, signaling_ip), the others as text."""
    headers = dict(headers)
    for name, decoder in DECODERS.items():
        if name in headers:
            headers[name] = decoder(headers[name])
    return headers

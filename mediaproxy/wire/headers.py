"""Decoding the header values of update/remove as the relay receives them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class HeaderError(ValueError):
    pass


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


def parse_media(value: str) -> list[MediaEntry]:
    """``type:ip:port:direction[:key=value...]``, comma-separated; empty elements are skipped."""
    entries = []
    for element in value.split(","):
        element = element.strip()
        if not element:
            continue
        parts = element.split(":")
        if len(parts) < 4:
            raise HeaderError(f"media stream {element!r} has fewer than 4 fields (type:ip:port:direction)")
        media_type, ip, port_text, direction = parts[:4]
        try:
            port = int(port_text)
        except ValueError:
            raise HeaderError(f"media stream {element!r} has a non-numeric port") from None
        if not 0 <= port < 65536:
            raise HeaderError(f"media stream {element!r} has port {port} outside 0-65535")
        parameters = {}
        for parameter in parts[4:]:
            if not parameter:
                continue
            key, sep, item = parameter.partition("=")
            if not sep:
                raise HeaderError(f"media parameter {parameter!r} has no '='")
            parameters[key] = item
        entries.append(MediaEntry(media_type, ip, port, direction, parameters))
    return entries


@dataclass(frozen=True)
class SignalingInfo:
    caller_ip: str | None
    destination_ip: str | None = None
    username: str | None = None


def parse_signaling_ip(value: str) -> SignalingInfo:
    """The three forms of ``signaling_ip``: a JSON object, ``SRC_DST``, or a plain IP."""
    try:
        decoded = json.loads(value)
    except ValueError:
        decoded = None
    else:
        if isinstance(decoded, dict):
            return SignalingInfo(
                _string(decoded.get("signaling_ip")), _string(decoded.get("destination_ip")), _string(decoded.get("username"))
            )
        # JSON scalars (a bare number, say) are not the object form; read them as text below.
    parts = value.split("_")
    if len(parts) == 2:
        return SignalingInfo(parts[0], parts[1])
    return SignalingInfo(value)


def _string(value: object) -> str | None:
    return None if value is None else str(value)


def parse_cseq(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise HeaderError(f"cseq {value!r} is not an integer") from None


def parse_type(value: str) -> str:
    if value not in ("request", "reply"):
        raise HeaderError(f"type {value!r} is neither 'request' nor 'reply'")
    return value


DECODERS = {"media": parse_media, "cseq": parse_cseq, "type": parse_type}


def decode_headers(lines: list[str], on_problem) -> dict:  # noqa: ANN001 - callable(str)
    """Split header lines and decode the typed ones; problems are reported and the header dropped."""
    headers: dict = {}
    for line in lines:
        name, sep, value = line.partition(": ")
        if not sep:
            on_problem(f"header line {line[:80]!r} has no ': '")
            continue
        decoder = DECODERS.get(name)
        if decoder is not None:
            try:
                headers[name] = decoder(value)
            except HeaderError as error:
                on_problem(str(error))
                continue
        else:
            headers[name] = value
    return headers

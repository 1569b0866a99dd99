"""A relay's answer to ``update``: the address and ports the proxy writes into the SDP.

``<ip> <port> [<port>...]``, a port per media stream of the request in order (0 for a stream
the relay does not relay), or ``None`` when the message had no SDP for the relay to answer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

NONE = "None"


@dataclass(frozen=True)
class UpdateReply:
    ip: str | None  # None: nothing to write into the SDP
    ports: tuple[int, ...] = ()

    def format(self) -> str:
        if self.ip is None:
            return NONE
        return " ".join([self.ip, *map(str, self.ports)])


def parse_update_reply(text: str) -> UpdateReply:
    """The reply a relay sent; ValueError naming what is wrong when it is not one."""
    tokens = text.split()
    if tokens == [NONE]:
        return UpdateReply(None)
    if not tokens:
        raise ValueError("an empty update reply")
    try:
        ip = str(ipaddress.ip_address(tokens[0]))
    except ValueError:
        raise ValueError(f"{tokens[0][:40]!r} is not an IP address") from None
    ports = []
    for token in tokens[1:]:
        if not (token.isascii() and token.isdigit() and len(token) <= 5 and int(token) <= 65535):
            raise ValueError(f"{token[:40]!r} is not a port")
        ports.append(int(token))
    return UpdateReply(ip, tuple(ports))

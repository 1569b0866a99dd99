"""Facts about media packets: STUN detection, RTP payload type names, routable addresses."""

from __future__ import annotations

import ipaddress

_STUN_COOKIE = b"\x21\x12\xa4\x42"

STATIC_PAYLOAD_TYPES = {
    0: "G711u", 1: "1016", 2: "G721", 3: "GSM", 4: "G723", 5: "DVI4", 6: "DVI4", 7: "LPC",
    8: "G711a", 9: "G722", 10: "L16", 11: "L16", 14: "MPA", 15: "G728", 18: "G729",
    25: "CelB", 26: "JPEG", 28: "nv", 31: "H261", 32: "MPV", 33: "MP2T", 34: "H263",
}  # fmt: skip


def is_stun(data: bytes) -> bool:
    return len(data) >= 20 and (data[0] << 8 | data[1]) & 0x000C == 0 and data[4:8] == _STUN_COOKIE


def is_stun_binding_request(data: bytes) -> bool:
    return data[0] == 0 and data[1] == 1


def codec_name(data: bytes) -> str:
    if len(data) < 2:
        return "Unknown"
    payload_type = data[1] & 0x7F
    name = STATIC_PAYLOAD_TYPES.get(payload_type)
    if name is not None:
        return name
    if payload_type > 95:
        return f"Dynamic({payload_type})"
    return f"Unknown({payload_type})"


_NOT_ROUTABLE = tuple(
    ipaddress.IPv4Network(network)
    for network in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    )
)  # fmt: skip


class Routability:
    """Whether media may be sent to an SDP address before the party's real address is learnt."""

    def __init__(self, routable_private_ranges: tuple = ()) -> None:
        self.allowed = tuple(routable_private_ranges)
        self._cache: dict[str, bool] = {}

    def __call__(self, ip: str) -> bool:
        known = self._cache.get(ip)
        if known is None:
            if len(self._cache) > 10000:
                self._cache.clear()
            known = self._cache[ip] = self._decide(ip)
        return known

    def _decide(self, ip: str) -> bool:
        try:
            address = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        if any(address in network for network in self.allowed):
            return True
        return not any(address in network for network in _NOT_ROUTABLE)

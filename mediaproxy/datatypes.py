"""Typed values of config.ini.

Every parser takes the raw text of an option and returns a typed value, or raises
``ValueError`` whose message says what is allowed; the configuration loader adds the
file, section, option and the bad value to make the operator's one-line error.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0"}


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected yes/no, true/false, on/off or 1/0")


# far above any sensible setting, and small enough for every timer and counter we feed it to
MAX_INTEGER = 10**9
MAX_DURATION = 366 * 86400
_INTEGER = re.compile(r"^\s*-?[0-9]{1,18}\s*$", re.ASCII)


def integer(text: str) -> int:
    """ASCII decimal digits only (``int()`` alone would take ``1_000`` or Arabic-Indic digits)."""
    if not _INTEGER.match(text):
        raise ValueError("expected a decimal integer")
    value = int(text.strip(), 10)
    if abs(value) > MAX_INTEGER:
        raise ValueError(f"expected an integer of at most {MAX_INTEGER}")
    return value


def positive_integer(text: str) -> int:
    value = integer(text)
    if value <= 0:
        raise ValueError("expected an integer greater than 0")
    return value


def non_negative_integer(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise ValueError("expected an integer of 0 or more")
    return value


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*([0-9]{1,12})\s*([smhd]?)\s*$", re.IGNORECASE | re.ASCII)


def duration(text: str) -> int:
    """Seconds, written as a plain number or with a unit: ``90``, ``90s``, ``5m``, ``2h``, ``1d``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError("expected a number of seconds, optionally with a unit s, m, h or d (e.g. 90, 5m, 2h)")
    value = int(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if value > MAX_DURATION:
        raise ValueError(f"expected at most {MAX_DURATION} seconds (366 days)")
    return value


def conntrack_mark(text: str) -> int:
    """A 32-bit netfilter mark, decimal or 0x-hexadecimal, not 0 (0 is every unmarked entry)."""
    value_text = text.strip()
    try:
        if not value_text.isascii() or "_" in value_text or len(value_text) > 12:
            raise ValueError
        value = int(value_text, 0)
    except ValueError:
        raise ValueError("expected an integer, e.g. 19792 or 0x4d50") from None
    if not 0 < value < 1 << 32:
        raise ValueError("expected a mark between 1 and 0xffffffff")
    return value


def positive_duration(text: str) -> int:
    value = duration(text)
    if value <= 0:
        raise ValueError("expected a duration greater than 0 (e.g. 10, 5m)")
    return value


def log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError("expected one of " + ", ".join(LOG_LEVELS))
    return value


def ipv4_address(text: str) -> str:
    value = text.strip()
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError("expected a dotted IPv4 address such as 192.0.2.1") from None


def optional_ipv4_address(text: str) -> str | None:
    if text.strip().lower() in ("", "none"):
        return None
    return ipv4_address(text)


def ascii_decimal(text: str, max_digits: int = 9) -> int | None:
    """``text`` as an int if it is 1 to ``max_digits`` ASCII digits, else None (``int()`` alone
    would also take ``1_0``, signs, spaces or Arabic-Indic digits)."""
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _port(text: str) -> int:
    port = ascii_decimal(text.strip())
    if port is None:
        raise ValueError(f"port {text!r} is not a number")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    return port


@dataclass(frozen=True)
class NetworkAddress:
    """A local listening address; host ``0.0.0.0`` stands for every interface."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def network_address(default_port: int):
    def parse(text: str) -> NetworkAddress:
        value = text.strip()
        host, sep, port = value.partition(":")
        if host.lower() in ("any", "", "0.0.0.0"):
            host = "0.0.0.0"
        else:
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise ValueError("expected ip[:port] where ip is a dotted IPv4 address or 'any'") from None
        return NetworkAddress(host, _port(port) if sep else default_port)

    return parse


def optional_local_listener(default_port: int):
    """A listener that is off unless configured and on this host only unless an address says
    otherwise: nothing (empty, ``no``, ``off``, ``none``) → off; ``yes``/``on``, ``PORT`` or
    ``:PORT`` → 127.0.0.1; ``ip[:port]`` (``any`` or ``0.0.0.0`` for every interface) → there."""
    parse_address = network_address(default_port)

    def parse(text: str) -> NetworkAddress | None:
        value = text.strip().lower()
        if value in ("", "no", "off", "none"):
            return None
        if value in ("yes", "on"):
            return NetworkAddress("127.0.0.1", default_port)
        if value.lstrip(":").isascii() and value.lstrip(":").isdigit():
            return NetworkAddress("127.0.0.1", _port(value.lstrip(":")))
        return parse_address(text)

    return parse


@dataclass(frozen=True)
class RtpproxySocket:
    """Where the rtpproxy front end listens: ``udp`` or ``udp6`` with host and port, or ``unix``
    with a path (relative paths are in the runtime directory)."""

    kind: str
    host: str  # the path for unix
    port: int | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.host}"
        host = f"[{self.host}]" if self.kind == "udp6" else self.host
        return f"{self.kind}:{host}:{self.port}"


RTPPROXY_PORT = 7722  # rtpproxy's own default


def optional_rtpproxy_socket(text: str) -> RtpproxySocket | None:
    """Kamailio's ``rtpproxy_sock`` forms: ``udp:HOST[:PORT]``, ``udp6:[HOST][:PORT]``, ``unix:/path``;
    off when empty, ``no``, ``off`` or ``none``."""
    value = text.strip()
    if value.lower() in ("", "no", "off", "none"):
        return None
    kind, sep, rest = value.partition(":")
    kind = kind.lower()
    if not sep or kind not in ("udp", "udp6", "unix") or not rest:
        raise ValueError("expected udp:HOST[:PORT], udp6:[HOST][:PORT] or unix:/path")
    if kind == "unix":
        return RtpproxySocket("unix", rest)
    host, port = _udp6_host_port(rest) if kind == "udp6" else _udp_host_port(rest)
    return RtpproxySocket(kind, host, _port(port) if port else RTPPROXY_PORT)


def _udp6_host_port(rest: str) -> tuple[str, str]:
    host, _, port = rest[1:].partition("]") if rest.startswith("[") else (rest, "", "")
    try:
        return str(ipaddress.IPv6Address(host)), port.removeprefix(":")
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv6 address (udp6:[::1]:7722)") from None


def _udp_host_port(rest: str) -> tuple[str, str]:
    host, _, port = rest.partition(":")
    try:
        return str(ipaddress.IPv4Address(host)), port
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv4 address (udp:127.0.0.1:7722)") from None


@dataclass(frozen=True)
class Endpoint:
    """A remote ``host[:port]``; host may be an IPv4 address or a domain name."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.IPv4Address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def is_hostname(text: str) -> bool:
    """A DNS name as relays may be given a dispatcher's: letters, digits, '-' and '_' in dot-separated labels."""
    return bool(_HOSTNAME.match(text))


def endpoint_list(default_port: int):
    def parse(text: str) -> tuple[Endpoint, ...]:
        result = []
        for item in string_list(text):
            host, sep, port = item.rpartition(":") if ":" in item else (item, "", "")
            if not is_hostname(host):
                raise ValueError(f"{item!r} is not host[:port] (host: IPv4 address or domain name)")
            endpoint = Endpoint(host.rstrip("."), _port(port) if sep else default_port)
            if endpoint not in result:
                result.append(endpoint)
        return tuple(result)

    return parse


@dataclass(frozen=True)
class PortRange:
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.start}:{self.end}"

    @property
    def pairs(self) -> int:
        return (self.end - self.start) // 2


def port_range(text: str) -> PortRange:
    allowed = "expected start:end with even numbers, start < end, both within 1024-65536"
    start_text, sep, end_text = text.strip().partition(":")
    if not sep:
        raise ValueError(allowed)
    start, end = ascii_decimal(start_text.strip()), ascii_decimal(end_text.strip())
    if start is None or end is None:
        raise ValueError(allowed)
    if start % 2 or end % 2:
        raise ValueError("both ends must be even numbers (RTP uses the even port, RTCP the odd one)")
    if not (1024 <= start < end <= 65536):
        raise ValueError(allowed)
    return PortRange(start, end)


def string_list(text: str) -> tuple[str, ...]:
    return tuple(item for item in re.split(r"[,\s]+", text.strip()) if item)


def network_range_list(text: str) -> tuple[ipaddress.IPv4Network, ...]:
    result = []
    for item in string_list(text):
        try:
            result.append(ipaddress.IPv4Network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 network; expected a comma-separated list of CIDRs such as 10.0.0.0/8") from None
    return tuple(result)


def ip_network_list(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """IPv4 and IPv6 networks (CIDRs or single addresses), comma-separated."""
    result = []
    for item in string_list(text):
        try:
            result.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP network; expected a comma-separated list such as 127.0.0.1, 10.1.0.0/16, ::1"
            ) from None
    return tuple(result)


LOOPBACK_NETWORKS = ip_network_list("127.0.0.0/8, ::1")


def address_in(address: str, networks: tuple) -> bool:
    """Whether ``address`` (as a socket reports it, IPv4-mapped IPv6 included) is in one of ``networks``."""
    try:
        parsed = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if parsed.version == 6 and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in networks if network.version == parsed.version)


PASSPORT_ATTRIBUTES = ("CN", "O", "OU", "C", "L", "ST", "EMAIL")


@dataclass(frozen=True)
class Passport:
    """Required values of a peer certificate's subject; ``*`` at the start or end is a wildcard."""

    checks: tuple[tuple[str, str], ...]

    def accepts(self, subject: dict[str, str]) -> bool:
        for name, pattern in self.checks:
            value = subject.get(name)
            if value is None:
                return False
            if pattern.startswith("*"):
                if not value.endswith(pattern[1:]):
                    return False
            elif pattern.endswith("*"):
                if not value.startswith(pattern[:-1]):
                    return False
            elif value != pattern:
                return False
        return True

    def __str__(self) -> str:
        return ", ".join(f"{name}:{value.replace(',', chr(92) + ',')}" for name, value in self.checks)


def passport(text: str) -> Passport | None:
    value = text.strip()
    if value.lower() in ("", "none"):
        return None
    checks = []
    for pair in re.split(r"(?<!\\),\s*", value):
        name, sep, pattern = pair.partition(":")
        name = name.strip().upper()
        if not sep:
            raise ValueError(f"{pair!r} has no ':'; expected ATTRIBUTE:value pairs such as 'O:AG Projects, CN:*relay' or None")
        if name not in PASSPORT_ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r}; allowed: " + ", ".join(PASSPORT_ATTRIBUTES))
        checks.append((name, pattern.strip().replace("\\,", ",")))
    return Passport(tuple(checks))


def choice(*allowed: str):
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError("expected one of " + ", ".join(allowed))
        return value

    return parse


def file_mode(text: str) -> int:
    """Permission bits in octal, as chmod takes them: ``0660``, ``660``, ``0o660``."""
    value = text.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{3,4}", value) or int(value, 8) > 0o777:
        raise ValueError("expected permission bits in octal, such as 0660")
    return int(value, 8)


def optional_group(text: str) -> str | None:
    """A group name or number; empty keeps the process's own group."""
    value = text.strip()
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*\$?|[0-9]+", value):
        raise ValueError("expected a group name or number")
    return value or None


def text_value(text: str) -> str:
    return text.strip()


MAX_WORKERS = 256


def workers(text: str) -> int | None:
    """``auto`` (None: the relay decides from the cores), or how many worker processes (0: none)."""
    value = text.strip().lower()
    if value == "auto":
        return None
    number = ascii_decimal(value)
    if number is None or number > MAX_WORKERS:
        raise ValueError(f"expected auto or a number of processes from 0 to {MAX_WORKERS}")
    return number


def optional_text(text: str) -> str | None:
    """A value, or None when empty or ``none``."""
    value = text.strip()
    return None if value.lower() in ("", "none") else value


def identifier(text: str) -> str:
    value = text.strip()
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", value):
        raise ValueError("expected an SQL identifier: letters, digits and '_', not starting with a digit")
    return value


def accounting_list(text: str) -> tuple[str, ...]:
    backends = string_list(text)
    for backend in backends:
        if backend not in ("database", "radius"):
            raise ValueError(f"unknown accounting backend {backend!r}; allowed: database, radius")
    return backends

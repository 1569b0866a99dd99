"""config.ini → typed, validated sections, parsed once at start-up."""

from __future__ import annotations

import configparser
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mediaproxy import datatypes as dt

SYSTEM_CONFIG_DIR = "/etc/mediaproxy"
DEFAULT_RUNTIME_DIR = "/run/mediaproxy"
CONFIG_FILE = "config.ini"


class ConfigurationError(Exception):
    """A bad value in config.ini; its text is the one line the operator sees."""


def option(default: Any, parse: Callable[[str], Any]) -> Any:
    return field(default=default, metadata={"parse": parse})


@dataclass(frozen=True)
class RelayConfig:
    dispatchers: tuple = option((), dt.endpoint_list(25060))
    passport: dt.Passport | None = option(None, dt.passport)
    verify_dispatcher_name: bool = option(False, dt.boolean)
    relay_ip: str | None = option(None, dt.optional_ipv4_address)
    advertised_ip: str | None = option(None, dt.optional_ipv4_address)
    auto_detect_interfaces: bool = option(False, dt.boolean)
    port_range: dt.PortRange = option(dt.PortRange(40000, 60000), dt.port_range)
    log_level: str = option("INFO", dt.log_level)
    stream_timeout: int = option(90, dt.positive_duration)
    on_hold_timeout: int = option(7200, dt.positive_duration)
    dns_check_interval: int = option(60, dt.positive_duration)
    keepalive_interval: int = option(10, dt.positive_duration)
    reconnect_delay: int = option(10, dt.positive_duration)
    traffic_sampling_period: int = option(15, dt.duration)
    userspace_transmit_every: int = option(1, dt.positive_integer)
    stun_queue_packets: int = option(32, dt.positive_integer)
    stun_queue_bytes: int = option(16384, dt.positive_integer)
    latch_window: int = option(5, dt.duration)
    routable_private_ranges: tuple = option((), dt.network_range_list)
    link_source_ip: str | None = option(None, dt.optional_ipv4_address)
    forwarding: str = option("auto", dt.choice("auto", "kernel", "userspace"))
    userspace_workers: int | None = option(None, dt.workers)
    fix_kernel_settings: bool = option(True, dt.boolean)
    keep_calls_on_stop: bool = option(True, dt.boolean)
    conntrack_mark: int = option(0x4D50, dt.conntrack_mark)
    metrics_listen: dt.NetworkAddress | None = option(None, dt.optional_local_listener(9452))


@dataclass(frozen=True)
class DispatcherConfig:
    socket_path: str = option("dispatcher.sock", dt.text_value)
    socket_mode: int = option(0o660, dt.file_mode)
    socket_group: str | None = option("mediaproxy", dt.optional_group)
    listen: dt.NetworkAddress = option(dt.NetworkAddress("0.0.0.0", 25060), dt.network_address(25060))
    listen_management: dt.NetworkAddress = option(dt.NetworkAddress("0.0.0.0", 25061), dt.network_address(25061))
    management_use_tls: bool = option(True, dt.boolean)
    metrics_listen: dt.NetworkAddress | None = option(None, dt.optional_local_listener(9450))
    web_listen: dt.NetworkAddress | None = option(None, dt.optional_local_listener(9451))
    web_use_tls: bool = option(False, dt.boolean)
    web_password_file: str | None = option(None, dt.optional_text)
    rtpproxy_listen: dt.RtpproxySocket | None = option(None, dt.optional_rtpproxy_socket)
    rtpproxy_allow: tuple = option(dt.LOOPBACK_NETWORKS, dt.ip_network_list)
    passport: dt.Passport | None = option(None, dt.passport)
    management_passport: dt.Passport | None = option(None, dt.passport)
    log_level: str = option("INFO", dt.log_level)
    relay_timeout: int = option(5, dt.positive_duration)
    max_connections: int = option(1000, dt.positive_integer)
    max_connections_per_ip: int = option(50, dt.positive_integer)
    descriptor_reserve: int = option(128, dt.positive_integer)
    tls_handshake_timeout: int = option(10, dt.positive_duration)
    management_idle_timeout: int = option(600, dt.positive_duration)
    relay_recover_interval: int = option(60, dt.positive_duration)
    cleanup_dead_relays_after: int = option(43200, dt.positive_duration)
    lost_relay_grace: int = option(300, dt.positive_duration)
    statistics_pull_interval: int = option(60, dt.duration)
    cleanup_expired_sessions_after: int = option(86400, dt.positive_duration)
    accounting: tuple = option((), dt.accounting_list)
    spool_dir: str = option("/var/spool/mediaproxy", dt.text_value)


@dataclass(frozen=True)
class TLSConfig:
    certs_path: str = option("tls", dt.text_value)
    verify_interval: int = option(300, dt.positive_duration)


@dataclass(frozen=True)
class DatabaseConfig:
    dburi: str = option("", dt.text_value)
    sessions_table: str = option("media_sessions", dt.identifier)
    callid_column: str = option("call_id", dt.identifier)
    fromtag_column: str = option("from_tag", dt.identifier)
    totag_column: str = option("to_tag", dt.identifier)
    info_column: str = option("info", dt.identifier)


@dataclass(frozen=True)
class RadiusConfig:
    config_file: str = option("/etc/opensips/radius/client.conf", dt.text_value)
    additional_dictionary: str = option("radius/dictionary", dt.text_value)


@dataclass(frozen=True)
class OpenSIPSConfig:
    socket_path: str = option("/run/opensips/socket", dt.text_value)
    location_table: str = option("location", dt.text_value)
    flavour: str = option("opensips", dt.choice("opensips", "kamailio"))


SECTIONS: dict[str, type] = {
    "Relay": RelayConfig,
    "Dispatcher": DispatcherConfig,
    "TLS": TLSConfig,
    "Database": DatabaseConfig,
    "Radius": RadiusConfig,
    "OpenSIPS": OpenSIPSConfig,
}

# Sections of the original that we accept and ignore, so an old config.ini still loads.
IGNORED_SECTIONS = ("ThorNetwork",)


@dataclass(frozen=True)
class Configuration:
    relay: RelayConfig = RelayConfig()
    dispatcher: DispatcherConfig = DispatcherConfig()
    tls: TLSConfig = TLSConfig()
    database: DatabaseConfig = DatabaseConfig()
    radius: RadiusConfig = RadiusConfig()
    opensips: OpenSIPSConfig = OpenSIPSConfig()
    path: str | None = None
    search_path: tuple[str, ...] = (SYSTEM_CONFIG_DIR,)

    def find(self, name: str) -> str | None:
        """Resolve a possibly relative path through the config search path."""
        if os.path.isabs(name):
            return name if os.path.exists(name) else None
        for directory in self.search_path:
            candidate = os.path.join(directory, name)
            if os.path.exists(candidate):
                return candidate
        return None


def search_path(config_dir: str | None, program_dir: str | None = None) -> tuple[str, ...]:
    local = config_dir or program_dir
    paths = [os.path.abspath(local)] if local else []
    if SYSTEM_CONFIG_DIR not in paths:
        paths.append(SYSTEM_CONFIG_DIR)
    return tuple(paths)


def load(paths: tuple[str, ...]) -> Configuration:
    """Read the first config.ini found in ``paths``; embedded defaults when there is none."""
    for directory in paths:
        candidate = os.path.join(directory, CONFIG_FILE)
        if os.path.isfile(candidate):
            return parse_file(candidate, paths)
    return Configuration(search_path=paths)


def parse_file(path: str, paths: tuple[str, ...] = (SYSTEM_CONFIG_DIR,)) -> Configuration:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"), strict=False)
    parser.optionxform = str  # option names are case-sensitive in the original
    try:
        with open(path, encoding="utf-8") as stream:
            parser.read_file(stream)
    except (OSError, UnicodeDecodeError, configparser.Error) as error:
        raise ConfigurationError(f"{path}: cannot read configuration: {_one_line(error)}") from None
    values = {}
    for section_name, section_class in SECTIONS.items():
        values[section_name.lower()] = _parse_section(path, parser, section_name, section_class)
    for section_name in parser.sections():
        if section_name not in SECTIONS and section_name not in IGNORED_SECTIONS:
            suggestion = _suggest(section_name, list(SECTIONS))
            raise ConfigurationError(f"{path}: unknown section [{section_name}]{suggestion}; known sections: " + ", ".join(SECTIONS))
    return Configuration(path=path, search_path=paths, **values)


def _parse_section(path: str, parser: configparser.ConfigParser, name: str, section_class: type) -> Any:
    section = section_class()
    if not parser.has_section(name):
        return section
    known = {f.name: f for f in fields(section_class)}
    updates = {}
    for option_name, raw in parser.items(name):
        spec = known.get(option_name)
        if spec is None:
            suggestion = _suggest(option_name, list(known))
            raise ConfigurationError(f"{path}: [{name}] unknown option {option_name!r}{suggestion}")
        try:
            updates[option_name] = spec.metadata["parse"](raw)
        except ValueError as error:
            raise ConfigurationError(f"{path}: [{name}] {option_name} = {raw!r} is invalid: {error}") from None
    return replace(section, **updates)


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())

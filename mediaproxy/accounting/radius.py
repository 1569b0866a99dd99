"""RADIUS accounting through pyrad: one Accounting-Request (status Update) per call.

The client is configured from the proxy's radiusclient-style file, so MediaProxy reports to the
same server with the same secret and dictionary as OpenSIPS/Kamailio do.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from mediaproxy.accounting.delivery import BackendUnavailable, RecordRejected
from mediaproxy.accounting.radius_dictionary import translated
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.process import StartupError
from mediaproxy.wire.statistics import SessionRecord

log = Logger(namespace="accounting")

MAX_STRING = 253
DEFAULT_ACCT_PORT = 1813
ATTRIBUTES = (
    "Acct-Status-Type",
    "User-Name",
    "Acct-Session-Id",
    "Sip-From-Tag",
    "Sip-To-Tag",
    "Acct-Session-Time",
    "Acct-Input-Octets",
    "Acct-Output-Octets",
    "NAS-IP-Address",
    "Sip-User-Agents",
    "Sip-Applications",
    "Media-Codecs",
    "Media-Info",
    "Acct-Delay-Time",
)


class RadiusConfigError(Exception):
    pass


@dataclass(frozen=True)
class ClientConfig:
    server: str
    port: int
    secret: str
    dictionary: str
    timeout: int
    retries: int
    bindaddr: str | None


def _settings(path: str) -> dict[str, str]:
    settings = {}
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.startswith("#"):
                continue
            fields = line.split(None, 1)
            if len(fields) == 2:
                settings[fields[0]] = fields[1].strip()
    return settings


def read_client_config(path: str) -> ClientConfig:
    """Parse a radiusclient(-ng) configuration file; RadiusConfigError says what is wrong."""
    try:
        settings = _settings(path)
    except OSError as error:
        raise RadiusConfigError(f"cannot read {path}: {error.strerror}") from None
    base = os.path.dirname(os.path.abspath(path))

    def required(key: str) -> str:
        if key not in settings:
            raise RadiusConfigError(f"{path}: {key} is missing")
        return settings[key]

    def integer(key: str) -> int:
        try:
            return int(required(key))
        except ValueError:
            raise RadiusConfigError(f"{path}: {key} must be an integer, not {settings[key]!r}") from None

    server, port, secret = _server(required("acctserver"), path)
    servers = os.path.join(base, required("servers"))
    if secret is None:
        secret = _secret_for(servers, server)
    bindaddr = settings.get("bindaddr")
    return ClientConfig(
        server=server,
        port=port,
        secret=secret,
        dictionary=os.path.join(base, required("dictionary")),
        timeout=integer("radius_timeout"),
        retries=integer("radius_retries"),
        bindaddr=None if bindaddr in (None, "*") else bindaddr,
    )


def _server(value: str, path: str) -> tuple[str, int, str | None]:
    """The first server of ``acctserver``: ``host[:port[:secret]]``, ``[IPv6][:port[:secret]]``
    (radcli), in a comma-separated list; radcli takes the others only when the first fails."""
    first = value.split(",")[0].strip()
    if first.startswith("["):
        host, bracket, rest = first[1:].partition("]")
        if not bracket:
            raise RadiusConfigError(f"{path}: acctserver {value!r} has a '[' without its ']'")
        rest = rest[1:] if rest.startswith(":") else rest
    else:
        host, _, rest = first.partition(":")
    port_text, _, secret = rest.partition(":")
    try:
        port = int(port_text) if port_text else DEFAULT_ACCT_PORT
    except ValueError:
        raise RadiusConfigError(f"{path}: bad port in acctserver {value!r}") from None
    if not host:
        raise RadiusConfigError(f"{path}: acctserver {value!r} names no host")
    return host, port, secret or None


def _secret_for(servers: str, host: str) -> str:
    try:
        with open(servers, encoding="utf-8") as file:
            for line in file:
                fields = line.split()
                if len(fields) < 2 or fields[0].startswith("#"):
                    continue
                # "server secret", or radcli's "client/server secret"
                if fields[0] == host or fields[0].rpartition("/")[2] == host:
                    return fields[1]
    except OSError as error:
        raise RadiusConfigError(f"cannot read the servers file {servers}: {error.strerror}") from None
    raise RadiusConfigError(f"no secret for {host} in {servers}")


def _text(value: object) -> str:
    """A string attribute value cut to what RADIUS can carry (253 bytes), on a character boundary."""
    return str(value).encode("utf-8")[:MAX_STRING].decode("utf-8", "ignore")


def _media_info(record: SessionRecord) -> str:
    if record.all_streams_ice:
        return "ICE session"
    return "timeout" if record.timed_out else ""


def _octets(streams: list) -> list[tuple[str, int]]:
    return [
        ("Acct-Input-Octets", sum(int(stream.caller_bytes) for stream in streams)),
        ("Acct-Output-Octets", sum(int(stream.callee_bytes) for stream in streams)),
    ]


def _applications(streams: list) -> list[str]:
    """The media types of the streams that lasted (a stream that never started is not one)."""
    return sorted({stream.media_type for stream in streams if stream.start_time != stream.end_time})


def attributes(record: SessionRecord) -> list[tuple[str, object]]:
    """The Accounting-Request attributes for one call's statistics record, in order."""
    streams = record.streams
    values: list[tuple[str, object]] = [
        ("Acct-Status-Type", "Update"),
        ("User-Name", _text(record.username or "mediaproxy@default")),
        ("Acct-Session-Id", _text(record.call_id)),
        ("Sip-From-Tag", _text(record.from_tag)),
        ("Sip-To-Tag", _text(record.to_tag or "")),
        ("Acct-Session-Time", int(record.duration)),
        *_octets(streams),
    ]
    if streams:
        # the original sends nothing at all for a call without streams; we leave out only this
        values.append(("NAS-IP-Address", streams[0].caller_local.rpartition(":")[0]))
    values += [
        ("Sip-User-Agents", _text(f"{record.caller_ua}+{record.callee_ua}")),
        ("Sip-Applications", _text(", ".join(_applications(streams)))),
        ("Media-Codecs", _text(", ".join(stream.caller_codec for stream in streams))),
        ("Media-Info", _media_info(record)),
    ]
    delays = [stream.post_dial_delay for stream in streams if stream.post_dial_delay is not None]
    if delays:
        values.append(("Acct-Delay-Time", int(delays[0])))
    return values


# OpenSIPS's numbers for the dialog tags (radiusclient-ng's and radcli's dictionary.sip), for a
# main dictionary that leaves them out (radcli's own does not include dictionary.sip)
SIP_TAGS = "ATTRIBUTE\tSip-To-Tag\t104\tstring\nATTRIBUTE\tSip-From-Tag\t105\tstring\n"


def load_dictionary(main: str, additional: str):
    """pyrad's Dictionary of the client's main dictionary and ours, whatever radiusclient,
    radcli or FreeRADIUS wrote them for (radius_dictionary translates their types)."""
    from pyrad.dictionary import Dictionary  # noqa: PLC0415 - pyrad is only needed with RADIUS accounting

    try:
        dictionary = Dictionary(translated(main))
        if not all(name in dictionary.attributes for name in ("Sip-From-Tag", "Sip-To-Tag")):
            log.info("The RADIUS dictionary {main} has no Sip-From-Tag/Sip-To-Tag: using 105 and 104, as OpenSIPS does", main=main)
            dictionary.ReadDictionary(io.StringIO(SIP_TAGS))
        dictionary.ReadDictionary(translated(additional))
    except (OSError, ValueError) as error:
        raise RadiusConfigError(f"cannot load the RADIUS dictionaries {main} and {additional}: {error}") from None
    except Exception as error:  # noqa: BLE001 - pyrad's ParseError is not an OSError/ValueError
        raise RadiusConfigError(f"cannot parse the RADIUS dictionaries {main} and {additional}: {error}") from None
    missing = [name for name in ATTRIBUTES if name not in dictionary.attributes]
    if missing:
        raise RadiusConfigError(f"the RADIUS dictionaries lack the attributes {', '.join(missing)}")
    if not dictionary.attributes["Acct-Status-Type"].values.HasForward("Update"):
        raise RadiusConfigError("the RADIUS dictionaries lack VALUE Acct-Status-Type Update 3")
    return dictionary


class RadiusBackend:
    def __init__(self, config_file: str, additional_dictionary: str | None) -> None:
        try:
            import pyrad.client  # noqa: PLC0415
        except ImportError:
            raise StartupError("RADIUS accounting needs pyrad (Debian: python3-pyrad)") from None
        if additional_dictionary is None:
            raise StartupError("RADIUS accounting: the additional dictionary (radius/dictionary) is not in the config directories")
        try:
            self.client_config = read_client_config(config_file)
            dictionary = load_dictionary(self.client_config.dictionary, additional_dictionary)
        except RadiusConfigError as error:
            raise StartupError(f"cannot read the RADIUS configuration file: {error}") from None
        settings = self.client_config
        self.timeout_error = pyrad.client.Timeout
        self.client = pyrad.client.Client(
            server=settings.server,
            acctport=settings.port,
            secret=settings.secret.encode(),
            dict=dictionary,
        )
        # attributes, not constructor arguments: pyrad 2.1 (Debian bookworm) does not take them there
        self.client.retries = max(settings.retries, 1)
        self.client.timeout = settings.timeout
        if settings.bindaddr:
            try:
                self.client.bind((settings.bindaddr, 0))
            except OSError as error:
                raise StartupError(f"RADIUS accounting: cannot bind to {settings.bindaddr}: {error.strerror}") from None
        self.where = f"{settings.server}:{settings.port}"

    def deliver(self, record: SessionRecord) -> None:
        try:
            packet = self.client.CreateAcctPacket()
            for name, value in attributes(record):
                packet.AddAttribute(name, value)
        except (KeyError, TypeError, ValueError) as error:
            raise RecordRejected(f"cannot build the accounting request: {error!r}") from None
        try:
            self.client.SendPacket(packet)
        except self.timeout_error:
            tries = self.client.retries
            raise BackendUnavailable(f"no reply from {self.where} after {tries} tr{'y' if tries == 1 else 'ies'}") from None
        except OSError as error:
            raise BackendUnavailable(f"cannot send to {self.where}: {error.strerror or error}") from None

    def close(self) -> None:
        # pyrad has no public close: its socket is closed with the client object
        self.client = None

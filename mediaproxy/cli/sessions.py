"""media-sessions: show what the dispatcher's relays are doing (management interface client)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import ssl
import sys
from typing import TextIO

from mediaproxy import configuration
from mediaproxy.web import passwords
from mediaproxy.wire.management import CONTROL
from mediaproxy.wire.statistics import SessionRecord


class ManagementError(Exception):
    pass


OPTIONAL = frozenset({"accounting"})  # dispatchers before 5.0 answer error to these


def query(host: str, port: int, commands: list[str], context: ssl.SSLContext | None, timeout: float = 10) -> list:
    """Send each command and return each decoded one-line JSON answer (None for an unknown optional one)."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise ManagementError(f"cannot connect to {host}:{port}: {error.strerror or error}") from None
    try:
        connection = context.wrap_socket(raw) if context is not None else raw
        stream = connection.makefile("rwb")
        answers = []
        for command in commands:
            stream.write(command.encode() + b"\r\n")
            stream.flush()
            line = stream.readline()
            if not line:
                raise ManagementError(f"the dispatcher closed the connection after {command!r} (wrong certificate or passport?)")
            text = line.decode().strip()
            if text == "error" and command in OPTIONAL:
                answers.append(None)
                continue
            if text == "error":
                raise ManagementError(f"the dispatcher answered error to {command!r}")
            answers.append(json.loads(text))
        stream.write(b"quit\r\n")
        stream.flush()
        return answers
    except (ssl.SSLError, OSError) as error:
        raise ManagementError(f"{host}:{port}: {error}") from None
    finally:
        raw.close()


def tls_context(certs_dir: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # the dispatcher is identified by the CA, as relays do
    try:
        context.load_verify_locations(os.path.join(certs_dir, "ca.pem"))
        context.load_cert_chain(os.path.join(certs_dir, "client.crt"), os.path.join(certs_dir, "client.key"))
    except (OSError, ssl.SSLError) as error:
        raise ManagementError(f"cannot load ca.pem and client.crt/client.key from {certs_dir}: {error}") from None
    return context


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def human_rate(bps: float) -> str:
    for unit in ("bps", "kbps", "Mbps"):
        if bps < 1000:
            return f"{bps:.0f} {unit}" if unit == "bps" else f"{bps:.1f} {unit}"
        bps /= 1000
    return f"{bps:.1f} Gbps"


def human_duration(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def relay_rows(summary: list[dict]) -> list[list[str]]:
    rows = []
    for relay in summary:
        if relay.get("status") == "error":
            rows.append([relay.get("ip", "?"), "error", "", "", "", "", ""])
            continue
        streams = ", ".join(f"{kind} {count}" for kind, count in sorted(relay.get("stream_count", {}).items())) or "-"
        rows.append(
            [
                relay["ip"],
                relay.get("status", "") + (", drained" if relay.get("drained") else ""),
                relay.get("version", ""),
                human_duration(relay.get("uptime", 0)),
                str(relay.get("session_count", 0)),
                streams,
                human_rate(relay.get("bps_relayed") or 0),
            ]
        )
    return rows


def session_rows(sessions: list[SessionRecord]) -> list[list[str]]:
    return [_session_row(session) for session in sessions]


def _session_row(session: SessionRecord) -> list[str]:
    streams = session.streams
    codecs = ", ".join(f"{s.media_type} {s.caller_codec}/{s.callee_codec}" for s in streams) or "-"
    caller_bytes = sum(s.caller_bytes for s in streams)
    callee_bytes = sum(s.callee_bytes for s in streams)
    status = ", ".join(sorted({s.status for s in streams})) or ("ringing" if session.start_time is None else "-")
    return [
        session.call_id,
        f"{session.from_uri or '?'} -> {session.to_uri or '?'}",
        human_duration(session.duration),
        codecs,
        f"{human_bytes(caller_bytes)} / {human_bytes(callee_bytes)}",
        status,
    ]


def accounting_rows(backends: list[dict]) -> list[list[str]]:
    return [
        [
            backend["backend"],
            backend["state"],
            str(backend["spooled"]),
            "-" if backend["oldest_age"] is None else human_duration(backend["oldest_age"]),
            str(backend["delivered"]),
            str(backend["rejected"]),
            backend.get("last_error") or "-",
        ]
        for backend in backends
    ]


def render(summary: list[dict] | None, sessions: list[SessionRecord] | None, out: TextIO, accounting: list[dict] | None = None) -> None:
    if summary is not None:
        out.write(f"Relays ({len(summary)})\n")
        out.write(table(["relay", "status", "version", "uptime", "sessions", "streams", "traffic"], relay_rows(summary)) + "\n")
    if accounting:
        out.write("\nAccounting\n")
        headers = ["backend", "state", "spooled", "oldest", "delivered", "rejected", "last error"]
        out.write(table(headers, accounting_rows(accounting)) + "\n")
    if sessions is not None:
        if summary is not None:
            out.write("\n")
        out.write(f"Sessions ({len(sessions)})\n")
        out.write(
            table(
                ["call id", "from -> to", "duration", "codecs (caller/callee)", "bytes caller / callee", "status"], session_rows(sessions)
            )
            + "\n"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="media-sessions", description="Show the relays and calls of a MediaProxy dispatcher (its management interface)."
    )
    parser.add_argument(
        "what",
        nargs="?",
        choices=("all", "summary", "sessions", "accounting", *CONTROL, "web-password"),
        default="all",
        help="what to show (default: all), or what to do: terminate CALL_ID, loglevel LEVEL [RELAY_IP], drain RELAY_IP, "
        "undrain RELAY_IP; web-password USER prints USER's line for web_password_file (the password read from the terminal or stdin)",
    )
    parser.add_argument("arguments", nargs="*", help="the control command's arguments")
    parser.add_argument("--host", help="dispatcher address (default: listen_management of config.ini, 127.0.0.1 for 'any')")
    parser.add_argument("--port", type=int, help="management port (default: listen_management of config.ini, 25061)")
    parser.add_argument(
        "--no-tls", action="store_true", help="plain TCP, for a dispatcher with management_use_tls = no (default: as config.ini says)"
    )
    parser.add_argument("--certs", help="directory with ca.pem, client.crt and client.key (default: certs_path of config.ini)")
    parser.add_argument("--config-dir", help=f"where config.ini is, searched before {configuration.SYSTEM_CONFIG_DIR}")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answers, for scripts")
    return parser


def _commands(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The management commands to send for what was asked (a usage error exits)."""
    if args.what in CONTROL:
        if not CONTROL[args.what].accepts(args.arguments):
            parser.error(f"{args.what} takes {CONTROL[args.what].usage}")
        return [" ".join([args.what, *args.arguments])]
    if args.arguments:
        parser.error(f"{args.what} takes no arguments")
    return {"all": ["summary", "accounting", "sessions"], "summary": ["summary", "accounting"]}.get(args.what, [args.what])


def _where(args: argparse.Namespace) -> tuple[str, int, object]:
    """Host, port and TLS context (or None) of the management interface: the options, else the
    dispatcher's own config.ini."""
    config = configuration.load(configuration.search_path(args.config_dir))
    listen = config.dispatcher.listen_management
    host = args.host or ("127.0.0.1" if listen.host == "0.0.0.0" else listen.host)
    context = None
    if not args.no_tls and (args.certs or config.dispatcher.management_use_tls):
        certs = args.certs or config.find(config.tls.certs_path) or config.tls.certs_path
        context = tls_context(certs)
    return host, args.port or listen.port, context


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = _parser()
    args = parser.parse_args(argv)
    if args.what == "web-password":
        if len(args.arguments) != 1:
            parser.error("web-password takes USER")
        return web_password(args.arguments[0], out)
    commands = _commands(parser, args)
    try:
        host, port, context = _where(args)
        answers = dict(zip(commands, query(host, port, commands, context)))
        if args.what in CONTROL:
            (answer,) = answers.values()
            out.write((json.dumps(answer, indent=2) if args.json else done_line(args.what, answer)) + "\n")
            return 0
        sessions = None if "sessions" not in answers else _records(answers["sessions"])
    except (ManagementError, configuration.ConfigurationError, ValueError) as error:
        print(f"media-sessions: {error}", file=sys.stderr)
        return 1
    if args.json:
        out.write(json.dumps(answers if len(answers) > 1 else answers[commands[0]], indent=2) + "\n")
    else:
        render(answers.get("summary"), sessions, out, answers.get("accounting"))
    return 0


def web_password(user: str, out: TextIO) -> int:
    """Prints ``user``'s line for the web page's password file; the password is asked twice on a
    terminal, read as the first line of stdin otherwise."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {user}: ")
        if getpass.getpass("Again: ") != password:
            print("media-sessions: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("media-sessions: an empty password", file=sys.stderr)
        return 1
    try:
        out.write(passwords.entry(user, password) + "\n")
    except ValueError as error:
        print(f"media-sessions: {error}", file=sys.stderr)
        return 1
    return 0


def done_line(command: str, answer: dict) -> str:
    """What a control command did, in words."""
    if command == "terminate":
        # why the proxy did not end it, where it was asked and the session was removed instead
        said = f" ({answer['proxy']})" if answer.get("proxy") and answer.get("done") == "session removed" else ""
        return f"call {answer.get('call_id')}: {answer.get('done')}{said}"
    if command == "loglevel":
        if "relay" in answer:
            return f"relay {answer['relay']}: log level {answer.get('level')}"
        return f"dispatcher: log level {answer.get('dispatcher')}"
    state = "takes no new calls" if answer.get("drained") else "takes new calls"
    return f"relay {answer.get('relay')} {state}"


def _records(answer: object) -> list[SessionRecord]:
    """The dispatcher's ``sessions`` answer as records; ValueError naming what is wrong with it."""
    if not isinstance(answer, list):
        raise ValueError("the sessions answer is not a JSON list")
    return [SessionRecord.from_json(item) for item in answer]


if __name__ == "__main__":
    sys.exit(main())

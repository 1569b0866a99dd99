"""config.ini datatypes and loading: good values, bad values and the operator's one-line errors."""

import ipaddress
import json
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import fields

import pytest

from harness import ROOT, program_command
from mediaproxy import configuration
from mediaproxy import datatypes as dt


@pytest.mark.parametrize(
    ("text", "value"),
    [("yes", True), ("True", True), ("on", True), ("1", True), ("no", False), ("OFF", False), ("false", False), ("0", False)],
)
def test_boolean(text, value):
    assert dt.boolean(text) is value


@pytest.mark.parametrize("text", ["", "maybe", "2", "y"])
def test_boolean_rejects(text):
    with pytest.raises(ValueError, match="yes/no"):
        dt.boolean(text)


def test_integers():
    assert dt.integer(" 42 ") == 42
    assert dt.positive_integer("1") == 1
    assert dt.non_negative_integer("0") == 0
    for parser, text in [(dt.integer, "4x"), (dt.positive_integer, "0"), (dt.non_negative_integer, "-1"), (dt.integer, "1.5")]:
        with pytest.raises(ValueError):
            parser(text)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), (" 3 M ", 180)])
def test_duration(text, seconds):
    assert dt.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "1.5h", "5 minutes", "h"])
def test_duration_rejects(text):
    with pytest.raises(ValueError, match="seconds"):
        dt.duration(text)


def test_positive_duration_rejects_zero():
    with pytest.raises(ValueError, match="greater than 0"):
        dt.positive_duration("0")


def test_log_level():
    assert dt.log_level("debug") == "DEBUG"
    with pytest.raises(ValueError, match="CRITICAL, ERROR, WARNING, INFO, DEBUG"):
        dt.log_level("verbose")


def test_ip_address():
    assert dt.ipv4_address("192.0.2.1") == "192.0.2.1"
    assert dt.optional_ipv4_address("") is None and dt.optional_ipv4_address("None") is None
    for bad in ["192.0.2", "256.1.1.1", "example.com", "::1"]:
        with pytest.raises(ValueError, match="IPv4"):
            dt.ipv4_address(bad)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("any", "0.0.0.0", 25060), ("0.0.0.0:1000", "0.0.0.0", 1000), ("192.0.2.1", "192.0.2.1", 25060), ("any:5", "0.0.0.0", 5)],
)
def test_network_address(text, host, port):
    assert dt.network_address(25060)(text) == dt.NetworkAddress(host, port)


@pytest.mark.parametrize("text", ["192.0.2.1:0", "192.0.2.1:70000", "192.0.2.1:http", "host.example:5"])
def test_network_address_rejects(text):
    with pytest.raises(ValueError):
        dt.network_address(25060)(text)


def test_endpoint_list():
    parse = dt.endpoint_list(25060)
    endpoints = parse("192.0.2.1, dispatcher.example.com:9000 192.0.2.1")
    assert endpoints == (dt.Endpoint("192.0.2.1", 25060), dt.Endpoint("dispatcher.example.com", 9000))
    assert endpoints[0].is_ip and not endpoints[1].is_ip
    assert parse("") == ()
    for bad in ["192.0.2.1:x", "bad_host!:5", "a..b", "192.0.2.1:99999"]:
        with pytest.raises(ValueError):
            parse(bad)


@pytest.mark.parametrize(("text", "start", "end"), [("40000:60000", 40000, 60000), ("1024:65536", 1024, 65536)])
def test_port_range(text, start, end):
    assert dt.port_range(text) == dt.PortRange(start, end)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("40001:60000", "even"),
        ("40000:40000", "start < end"),
        ("60000:40000", "start < end"),
        ("1000:2000", "1024"),
        ("40000", "start:end"),
        ("a:b", "start:end"),
        ("40000:70000", "65536"),
    ],
)
def test_port_range_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        dt.port_range(text)


def test_network_range_list():
    assert dt.network_range_list("10.0.0.0/8, 192.168.1.7") == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv4Network("192.168.1.7/32"),
    )
    with pytest.raises(ValueError, match="CIDR"):
        dt.network_range_list("10.0.0.0/33")


def test_string_list_and_accounting():
    assert dt.string_list("a, b  c,,d") == ("a", "b", "c", "d")
    assert dt.accounting_list("database radius") == ("database", "radius")
    with pytest.raises(ValueError, match="allowed: database, radius"):
        dt.accounting_list("database, mysql")


def test_choice_and_identifier():
    assert dt.choice("auto", "kernel")("Kernel") == "kernel"
    with pytest.raises(ValueError, match="auto, kernel"):
        dt.choice("auto", "kernel")("fast")
    assert dt.identifier("media_sessions") == "media_sessions"
    with pytest.raises(ValueError):
        dt.identifier("drop table;")


def test_passport_parsing():
    passport = dt.passport("O:AG Projects, CN:*relay")
    assert passport.checks == (("O", "AG Projects"), ("CN", "*relay"))
    assert dt.passport("None") is None and dt.passport("none") is None and dt.passport("") is None
    assert dt.passport(r"O:Example\, Inc., cn:x").checks == (("O", "Example, Inc."), ("CN", "x"))
    with pytest.raises(ValueError, match="unknown attribute 'XX'"):
        dt.passport("XX:foo")
    with pytest.raises(ValueError, match="no ':'"):
        dt.passport("CN")


@pytest.mark.parametrize(
    ("passport", "subject", "accepted"),
    [
        ("CN:*relay", {"CN": "media-relay"}, True),
        ("CN:*relay", {"CN": "relay-1"}, False),
        ("CN:relay*", {"CN": "relay-1"}, True),
        ("CN:relay*", {"CN": "media-relay"}, False),
        ("O:AG Projects, CN:*relay", {"O": "AG Projects", "CN": "x-relay"}, True),
        ("O:AG Projects, CN:*relay", {"O": "Other", "CN": "x-relay"}, False),
        ("OU:voice", {"CN": "x"}, False),
        ("EMAIL:ops@example.com, C:NL, L:Amsterdam, ST:NH", {"EMAIL": "ops@example.com", "C": "NL", "L": "Amsterdam", "ST": "NH"}, True),
        ("CN:exact", {"CN": "exactly"}, False),
    ],
)
def test_passport_matching(passport, subject, accepted):
    assert dt.passport(passport).accepts(subject) is accepted


def write(directory, text):
    path = os.path.join(directory, "config.ini")
    with open(path, "w") as stream:
        stream.write(text)
    return path


def test_defaults_without_a_file(tmp_path):
    config = configuration.load((str(tmp_path),))
    assert config.path is None
    assert config.relay.port_range == dt.PortRange(40000, 60000)
    assert config.dispatcher.listen == dt.NetworkAddress("0.0.0.0", 25060)
    assert config.dispatcher.listen_management.port == 25061
    assert config.relay.stream_timeout == 90 and config.relay.on_hold_timeout == 7200
    assert config.tls.certs_path == "tls" and config.tls.verify_interval == 300
    assert config.database.sessions_table == "media_sessions"
    assert config.opensips.socket_path == "/run/opensips/socket"


def test_full_file(tmp_path):
    write(
        tmp_path,
        """
[Relay]
dispatchers = 192.0.2.1 dispatcher.example.com:25070
passport = O:AG Projects, CN:*dispatcher
relay_ip = 192.0.2.5
port_range = 50000:50100
stream_timeout = 2m
routable_private_ranges = 10.0.0.0/8
[Dispatcher]
listen = 127.0.0.1
management_use_tls = no
accounting = database
[ThorNetwork]
domain = ignored.example
""",
    )
    config = configuration.load((str(tmp_path), "/nonexistent"))
    assert config.path == os.path.join(tmp_path, "config.ini")
    assert config.relay.dispatchers[1] == dt.Endpoint("dispatcher.example.com", 25070)
    assert config.relay.passport.accepts({"O": "AG Projects", "CN": "main-dispatcher"})
    assert config.relay.stream_timeout == 120
    assert config.dispatcher.listen == dt.NetworkAddress("127.0.0.1", 25060)
    assert config.dispatcher.management_use_tls is False
    assert config.dispatcher.accounting == ("database",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[Relay]\nport_range = 40001:50000\n", "[Relay] port_range = '40001:50000' is invalid: both ends must be even"),
        ("[Dispatcher]\nrelay_timeout = soon\n", "[Dispatcher] relay_timeout = 'soon' is invalid"),
        ("[Relay]\nstream_timout = 5\n", "[Relay] unknown option 'stream_timout' (did you mean 'stream_timeout'?)"),
        ("[Relais]\nx = 1\n", "unknown section [Relais] (did you mean 'Relay'?)"),
        ("[TLS]\nverify_interval = 0\n", "[TLS] verify_interval = '0' is invalid"),
        ("not an ini file\n", "cannot read configuration"),
    ],
)
def test_bad_values_name_file_section_option_and_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(configuration.ConfigurationError) as caught:
        configuration.load((str(tmp_path),))
    assert str(caught.value).startswith(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_search_path_prefers_local_directory(tmp_path):
    local, system = tmp_path / "local", tmp_path / "system"
    local.mkdir()
    system.mkdir()
    write(system, "[Relay]\nstream_timeout = 5\n")
    assert configuration.load((str(local), str(system))).relay.stream_timeout == 5
    write(local, "[Relay]\nstream_timeout = 7\n")
    assert configuration.load((str(local), str(system))).relay.stream_timeout == 7
    assert configuration.search_path(str(local))[0] == str(local)
    assert configuration.search_path(None, "/opt/mp")[:2] == ("/opt/mp", configuration.SYSTEM_CONFIG_DIR)


@pytest.mark.parametrize("program", ["media-dispatcher", "media-relay"])
def test_programs_print_one_line_for_a_bad_option(tmp_path, program):
    write(tmp_path, "[Relay]\nport_range = 1:2\n[Dispatcher]\nlisten = nowhere\n")
    result = subprocess.run(
        [*program_command(program), "--no-fork", "--config-dir", str(tmp_path), "--runtime-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78  # EX_CONFIG: systemd does not restart on it
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{program}: {tmp_path}/config.ini: [")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("program", ["media-dispatcher", "media-relay"])
def test_programs_version_and_missing_certificates(tmp_path, program):
    result = subprocess.run([*program_command(program), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith(f"{program} ")
    write(tmp_path, "[TLS]\ncerts_path = missing-certs\n")
    result = subprocess.run(
        [*program_command(program), "--no-fork", "--config-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78
    assert "certs_path 'missing-certs': no such directory" in result.stderr and "mediaproxy-gen-certs" in result.stderr


def test_sample_documents_every_option_and_loads(tmp_path):
    with open(os.path.join(ROOT, "config.ini.sample")) as stream:
        sample = stream.read()
    documented = {}
    section = None
    for line in sample.splitlines():
        header = re.match(r"^\[(\w+)\]", line)
        if header:
            section = header.group(1)
        option = re.match(r"^;(\w+) =", line)
        if option and section:
            documented.setdefault(section, set()).add(option.group(1))
    for name, section_class in configuration.SECTIONS.items():
        assert documented.get(name) == {field.name for field in fields(section_class)}, name
    # uncommenting the defaults gives a valid file equal to the embedded defaults
    uncommented = re.sub(r"^;(\w+ =.*)$", r"\1", sample, flags=re.MULTILINE)
    uncommented = re.sub(
        r"^(dispatchers|routable_private_ranges|relay_ip|advertised_ip|link_source_ip|accounting|dburi) =.*$",
        r"\1 =",
        uncommented,
        flags=re.MULTILINE,
    )
    write(tmp_path, uncommented)
    loaded = configuration.load((str(tmp_path),))
    assert loaded.relay == configuration.RelayConfig()
    assert loaded.dispatcher == configuration.DispatcherConfig()


@pytest.mark.parametrize("client", ["builtin", "kamailio"])
def test_demo_runs_a_call_through_the_relay(tmp_path, client):
    result = subprocess.run(
        [sys.executable, "-m", "mediaproxy.demo.run", "--directory", str(tmp_path / "demo"), "--seconds", "1", "--client", client],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The relay is connected to the dispatcher over mutual TLS." in result.stdout
    assert '"caller_codec": "G711u"' in result.stdout and "Dispatcher and relay stopped." in result.stdout
    # the accounting record is read back from the SQLite file the dispatcher wrote
    assert "Accounting record the dispatcher wrote to" in result.stdout
    (info,) = sqlite3.connect(tmp_path / "demo" / "accounting.sqlite").execute("SELECT info FROM media_sessions").fetchone()
    record = json.loads(info)
    stream = record["streams"][0]
    assert stream["caller_packets"] > 0 and stream["callee_packets"] > 0
    assert ("sipp" in record["caller_ua"]) == (client == "kamailio")

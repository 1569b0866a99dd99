"""Property tests for every parser a peer or an operator feeds: whatever arrives, each returns a
value or raises its documented error, and framing does not depend on how bytes are chunked."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mediaproxy import configuration
from mediaproxy.configuration import RelayConfig
from mediaproxy.datatypes import PortRange
from mediaproxy.relay import reports
from mediaproxy.relay.model import packets, serialize
from mediaproxy.relay.sessions import SessionManager, UpdateError
from mediaproxy.testing import FakeBinder
from mediaproxy.wire import headers, jsontext, relaylink, statistics
from mediaproxy.wire.control import ProxyRequest, RequestError, RequestFramer
from mediaproxy.wire.lines import LineSplitter, OverlongLine

# derandomized: the same examples on every run, so CI is deterministic; bench/fuzz.py explores
BOUNDED = settings(max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# text that looks like the protocol often enough to get past the first checks
TOKENS = st.sampled_from(
    ["update", "remove", "call_id: ", "from_tag: ", "cseq: ", "type: ", "media: ", "signaling_ip: ", "audio:", "1.2.3.4",
     ":6000:", "sendrecv", "request", "reply", "\r\n", "\n", "\r", ": ", ",", "{", "[", "\"", "]", "}", "\u0661", "1", "0"]
)  # fmt: skip
PROTOCOLISH = st.lists(st.one_of(TOKENS, st.text(max_size=8)), max_size=40).map("".join)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[start:end] for start, end in zip([0, *points], [*points, len(data)])]


def _describe(items: list) -> list:
    return [(type(item).__name__, str(item) if isinstance(item, RequestError) else repr(item)) for item in items]


@BOUNDED
@given(PROTOCOLISH, st.lists(st.integers(min_value=0), max_size=6))
def test_request_framing_is_the_same_however_the_bytes_arrive(text, cuts):
    data = text.encode("utf-8", "surrogatepass")
    whole = RequestFramer(max_line=64).feed(data)
    framer = RequestFramer(max_line=64)
    pieces = [item for chunk in _split(data, cuts) for item in framer.feed(chunk)]
    assert _describe(whole) == _describe(pieces)
    assert all(isinstance(item, (ProxyRequest, RequestError)) for item in whole)


@BOUNDED
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=6))
def test_line_splitting_is_the_same_however_the_bytes_arrive(data, cuts):
    whole = LineSplitter(16).feed(data)
    splitter = LineSplitter(16)
    pieces = [item for chunk in _split(data, cuts) for item in splitter.feed(chunk)]
    assert whole == pieces
    assert all(isinstance(item, OverlongLine) or len(item) <= 16 for item in whole)


@BOUNDED
@given(st.sampled_from(["update", "remove", "summary", ""]), st.lists(PROTOCOLISH, max_size=12))
def test_header_decoding_returns_headers_or_header_error(command, lines):
    try:
        decoded = headers.decode(command, lines)
    except headers.HeaderError:
        return
    assert decoded["call_id"] and command in headers.COMMANDS


@BOUNDED
@given(PROTOCOLISH)
def test_value_parsers_return_values_or_header_error(text):
    for parse in (headers.parse_media, headers.parse_signaling_ip, headers.parse_cseq, headers.parse_type):
        try:
            parse(text)
        except headers.HeaderError:
            pass


@st.composite
def media_entries(draw):
    return headers.MediaEntry(
        draw(st.sampled_from(["audio", "video", "image"])),
        draw(st.ip_addresses(v=4).map(str)),
        draw(st.integers(0, 65535)),
        draw(st.sampled_from(headers.DIRECTIONS)),
        {"ice": draw(st.sampled_from(["yes", "no"]))},
    )


@BOUNDED
@given(st.lists(media_entries(), min_size=1, max_size=headers.MAX_MEDIA_STREAMS))
def test_media_written_as_kamailio_writes_it_reads_back(entries):
    text = ",".join(f"{e.media_type}:{e.ip}:{e.port}:{e.direction}:ice={e.parameters['ice']}" for e in entries)
    assert headers.parse_media(text) == entries


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=20,
)


@BOUNDED
@given(st.one_of(PROTOCOLISH, JSONISH.map(lambda value: __import__("json").dumps(value))))
def test_relay_lines_and_statistics_parse_or_raise_value_error(text):
    assert isinstance(relaylink.parse_relay_line(text), (relaylink.Reply, relaylink.Expired, relaylink.Ping, relaylink.Garbage))
    for parse in (statistics.parse_record, statistics.parse_sessions, statistics.parse_summary, jsontext.loads):
        try:
            parse(text)
        except ValueError:
            pass


@BOUNDED
@given(st.lists(st.one_of(PROTOCOLISH, st.sampled_from(["page: 0", "page: 12", "call_id: c1", "page: x"])), max_size=6))
def test_sessions_requests_parse_or_raise_value_error(lines):
    try:
        request = relaylink.parse_sessions_request(lines)
    except ValueError:
        return
    assert request.position is None or request.position >= 0
    assert request.call_id is None or (request.call_id and request.position is not None)


@BOUNDED
@given(
    st.one_of(st.none(), st.integers(0, 10**9 - 1)),
    st.one_of(st.none(), st.text(min_size=1).filter(lambda t: "\r" not in t and "\n" not in t)),
)
def test_sessions_requests_read_back(position, call_id):
    if call_id is not None and position is None:
        return  # a one-call listing is always paged
    lines = [
        line
        for line in relaylink.SessionsRequest(position, call_id).header_block().decode("utf-8", "surrogateescape").split("\r\n")
        if line
    ]
    assert relaylink.parse_sessions_request(lines) == relaylink.SessionsRequest(position, call_id)


@BOUNDED
@given(st.integers(1, 100), st.integers(0, 3))
def test_json_nesting_beyond_the_limit_is_a_value_error(depth, kind):
    opening, closing = ["[", '{"a": ', "[[", '[{"b": '][kind], ["]", "}", "]]", "}]"][kind]
    text = opening * depth + '"[{[{"' + closing * depth  # brackets in a string do not count
    nested = depth * (2 if kind >= 2 else 1)
    try:
        value = jsontext.loads(text, max_depth=8)
    except ValueError:
        assert nested > 8
    else:
        assert nested <= 8 and jsontext.nesting_depth(value) == nested


OPTIONS = [
    (section, spec.name, spec.metadata["parse"])
    for section, section_class in configuration.SECTIONS.items()
    for spec in dataclasses.fields(section_class)
]


@BOUNDED
@given(st.sampled_from(OPTIONS), st.one_of(PROTOCOLISH, st.from_regex(r"\s*[0-9\u0660-\u0669_]{1,40}[smhd]?\s*", fullmatch=True)))
def test_every_config_option_parses_or_raises_value_error(option, text):
    _section, _name, parse = option
    try:
        parse(text)
    except ValueError:
        pass


@BOUNDED
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2, 3]), st.binary(max_size=64), st.sampled_from(["192.0.2.10", "203.0.113.66"]), st.integers(1, 65535)
        ),
        max_size=30,
    )
)
def test_any_packets_from_anywhere_leave_the_relay_consistent(arrivals):
    clock = Clock()
    binder = FakeBinder()
    manager = SessionManager(clock, RelayConfig(port_range=PortRange(40000, 40010)), binder, lambda *args: None, "203.0.113.5")
    common = "call_id: c\nfrom_tag: f\nfrom_uri: a\nto_uri: b\nuser_agent: u\nsignaling_ip: 192.0.2.10\n"
    manager.update(headers.decode("update", (common + "type: request\ncseq: 1\nmedia: audio:192.0.2.10:6000:sendrecv").splitlines()))
    manager.update(
        headers.decode("update", (common + "type: reply\ncseq: 1\nto_tag: t\nmedia: audio:198.51.100.1:7000:sendrecv").splitlines())
    )
    ports = sorted(binder.by_port)
    for socket_index, data, ip, port in arrivals:
        packets.is_stun(data) and packets.is_stun_binding_request(data)
        packets.codec_name(data)
        binder.by_port[ports[socket_index]].deliver(data, (ip, port))
        clock.advance(0.5)
    (record,) = reports.statistics(manager)
    statistics.SessionRecord.from_json(record)
    try:
        manager.remove({"call_id": "c", "from_tag": "f"})
    except UpdateError:
        raise AssertionError("the session is gone") from None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)
KEPT_ERRORS = (KeyError, TypeError, ValueError, AttributeError)  # what a relay taking back its sessions logs and skips


def _kept_session() -> tuple[list, SessionManager]:
    manager = SessionManager(Clock(), RelayConfig(port_range=PortRange(40000, 40010)), FakeBinder(), lambda *args: None, "203.0.113.5")
    common = "call_id: c\nfrom_tag: f\nfrom_uri: a\nto_uri: b\nuser_agent: u\nsignaling_ip: 192.0.2.10\n"
    manager.update(headers.decode("update", (common + "type: request\ncseq: 1\nmedia: audio:192.0.2.10:6000:sendrecv").splitlines()))
    (session,) = manager.sessions.values()
    return json.loads(json.dumps(serialize.dump_session(session))), manager


def _replace(value: object, path: list[int], junk: object) -> object:
    """``value`` with the element ``path`` leads to (indexes taken modulo each list's length) replaced by ``junk``."""
    if not path or not isinstance(value, list) or not value:
        return junk
    index = path[0] % len(value)
    return [*value[:index], _replace(value[index], path[1:], junk), *value[index + 1 :]]


@BOUNDED
@given(st.lists(st.integers(0, 40), max_size=5), JSON_VALUES)
def test_a_damaged_kept_session_loads_or_raises_what_the_relay_skips(path, junk):
    kept, manager = _kept_session()
    assert serialize.load_session(kept, 1, manager.policy, manager.clock).call_id == "c"  # undamaged, it loads
    state = _replace(kept, path, junk)
    for read in (serialize.kept_ports, serialize.kernel_flows):
        try:
            read(state)
        except KEPT_ERRORS:
            pass
    try:
        serialize.load_session(state, 1, manager.policy, manager.clock)
    except KEPT_ERRORS:
        pass


def _sessions_read_whole(text: str) -> statistics.SessionList:
    """A ``sessions`` answer decoded in one piece: what :func:`statistics.parse_sessions` reads
    record by record must come out the same."""
    value = jsontext.loads(text, statistics.MAX_DEPTH + 2)
    if isinstance(value, list):
        return statistics.SessionList([statistics.SessionRecord.from_json(item) for item in value])
    if not isinstance(value, dict) or not isinstance(value.get("sessions"), list):
        raise ValueError("neither")
    following = value.get("next")
    if following is not None and (isinstance(following, bool) or not isinstance(following, int) or following < 0):
        raise ValueError("next")
    return statistics.SessionList([statistics.SessionRecord.from_json(item) for item in value["sessions"]], following)


RECORDISH = st.one_of(
    st.fixed_dictionaries(
        {"call_id": st.text(max_size=4), "from_tag": st.sampled_from(["f", 1])},
        optional={
            "duration": st.one_of(st.integers(0, 9), st.just("x")),
            "streams": st.lists(st.dictionaries(st.sampled_from(["status", "extra"]), JSONISH, max_size=2), max_size=2),
        },
    ),
    JSONISH,
)
SPACE = st.sampled_from(["", " ", "\n", "\r\n\t "])


@BOUNDED
@given(
    st.lists(RECORDISH, max_size=4),
    st.one_of(st.none(), st.integers(-1, 99), st.just(True), st.just("3"), JSONISH),
    st.sampled_from(["page", "next first", "list", "no sessions", "extra key"]),
    st.lists(SPACE, min_size=8, max_size=8),
)
def test_sessions_read_record_by_record_as_when_read_whole(records, following, shape, spaces):
    s = spaces
    items = f"{s[0]},{s[1]}".join(json.dumps(record) for record in records)
    listed = f"[{s[2]}{items}{s[3]}]"
    text = {
        "page": f'{s[4]}{{{s[5]}"sessions"{s[6]}:{listed},"next":{s[7]}{json.dumps(following)}}}{s[0]}',
        "next first": f'{{"next"{s[4]}:{s[5]}{json.dumps(following)}{s[6]},{s[7]}"sessions":{listed}}}',
        "list": f"{s[4]}{listed}{s[5]}",
        "no sessions": f'{{"next":{json.dumps(following)}}}',
        "extra key": f'{{"sessions":{listed},"more":{json.dumps(following)}{s[4]}}}',
    }[shape]
    try:
        expected: object = _sessions_read_whole(text)
    except ValueError:
        expected = ValueError
    try:
        got: object = statistics.parse_sessions(text)
    except ValueError:
        got = ValueError
    assert got == expected

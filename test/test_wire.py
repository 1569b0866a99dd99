"""Pure wire formats: proxy request framing, header decoding, relay link lines."""

import json

import pytest

from mediaproxy.wire import jsontext, relaylink, statistics
from mediaproxy.wire.control import ProxyRequest, RequestError, RequestFramer
from mediaproxy.wire.headers import HeaderError, SignalingInfo, parse_media, parse_signaling_ip
from mediaproxy.wire.lines import LineSplitter, OverlongLine
from mediaproxy.wire.statistics import SessionRecord, StreamRecord
from mediaproxy.wire.update import UpdateReply, parse_update_reply

UPDATE = (
    b"update\r\ntype: request\r\ncall_id: c1\r\ncseq: 1\r\nfrom_uri: a@x\r\nto_uri: b@x\r\nfrom_tag: ft\r\n"
    b"to_tag: \r\nuser_agent: ua\r\nsignaling_ip: 127.0.0.1\r\nmedia_relay: \r\nmedia: audio:192.0.2.1:6000:sendrecv\r\n\r\n"
)


def feed(framer, *chunks):
    results = []
    for chunk in chunks:
        results.extend(framer.feed(chunk))
    return results


def test_request_split_across_chunks_and_empty_values_dropped():
    framer = RequestFramer()
    results = feed(framer, *(UPDATE[i : i + 1] for i in range(len(UPDATE))))
    (request,) = results
    assert isinstance(request, ProxyRequest)
    assert request.command == "update"
    assert request.lines[:2] == ["type: request", "call_id: c1"] and len(request.lines) == 9
    assert "to_tag" not in request.headers and "media_relay" not in request.headers
    assert request.headers["cseq"] == 1 and request.headers["media"][0].port == 6000
    assert request.encode_headers().startswith(b"type: request\r\ncall_id: c1\r\ncseq: 1\r\n")
    assert not framer.pending


def test_pipelined_requests_and_stray_empty_lines():
    framer = RequestFramer()
    results = framer.feed(b"\r\n\r\nremove\r\ncall_id: a\r\nfrom_tag: f\r\n\r\nremove\r\ncall_id: b\r\nfrom_tag: f\r\n\r\n\r\n")
    assert [r.call_id for r in results] == ["a", "b"]


def test_values_containing_colon_space_split_at_the_first_one():
    (request,) = RequestFramer().feed(
        UPDATE.replace(b"call_id: c1", b"call_id: x: y").replace(b"signaling_ip: 127.0.0.1", b'signaling_ip: {"a": 1}')
    )
    assert request.headers["call_id"] == "x: y"
    # decoded once here; the relay is sent the very same line
    assert request.headers["signaling_ip"] == SignalingInfo(None) and 'signaling_ip: {"a": 1}' in request.lines


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"update\r\nno colon\r\ncall_id: c\r\n\r\n", "no 'name: value' form"),
        (b"update\r\ncseq: 1\r\n\r\n", "without call_id"),
        (b"update\r\ncall_id: \xff\xfe\r\n\r\n", "not UTF-8"),
        (b"update\r\n" + b"a: b\r\n" * 70 + b"call_id: c\r\n\r\n", "more than 64 lines"),
        (b"update\r\ncall_id: " + b"x" * 20000 + b"\r\n\r\n", "longer than"),
        # only update and remove reach a relay, and the command line is exactly that word
        (UPDATE.replace(b"update", b"update x", 1), "neither update nor remove"),
        (b"summary\r\ncall_id: c\r\n\r\n", "neither update nor remove"),
        # one reading of a request, the same on the dispatcher and the relay
        (b"remove\r\ncall_id: attacker\r\ncall_id: victim\r\nfrom_tag: f\r\n\r\n", "appears twice"),
        (UPDATE.replace(b"cseq: 1", "cseq: \u0661".encode()), "not a decimal number"),
        (UPDATE.replace(b"cseq: 1", b"cseq: 1_0"), "not a decimal number"),
        (UPDATE.replace(b"cseq: 1", b"cseq: 99999999999"), "not a decimal number"),
        (UPDATE.replace(b"cseq: 1", b"cseq: 4294967296"), "above"),
        (UPDATE.replace(b"type: request", b"type: other"), "neither 'request' nor 'reply'"),
        (UPDATE.replace(b":6000:", ":\u0666000:".encode()), "not a decimal number"),
        (UPDATE.replace(b"sendrecv", b"sendrecv," + b"audio:1.2.3.4:5:sendrecv," * 16), "more than 16 streams"),
        (UPDATE.replace(b"signaling_ip: 127.0.0.1", b"signaling_ip: {" + b"[" * 5000), "not valid JSON"),
        (UPDATE.replace(b"signaling_ip: 127.0.0.1", b'signaling_ip: {"signaling_ip": [[[1]]]}'), "not valid JSON"),
        (UPDATE.replace(b"signaling_ip: 127.0.0.1", b'signaling_ip: {"signaling_ip": ["1"]}'), "nested value"),
    ],
)
def test_malformed_requests_give_one_error_each(data, problem):
    framer = RequestFramer()
    results = framer.feed(data)
    assert len(results) == 1 and isinstance(results[0], RequestError)
    assert problem in str(results[0])
    # the framer is ready for the next request
    (good,) = framer.feed(b"remove\r\ncall_id: ok\r\nfrom_tag: f\r\n\r\n")
    assert good.call_id == "ok"


def test_overlong_line_without_newline_is_discarded_incrementally():
    framer = RequestFramer(max_line=100)
    assert framer.feed(b"update\r\ncall_id: " + b"x" * 500) == []
    assert len(framer._splitter._buffer) < 200  # not buffered without bound
    for _ in range(100):
        assert framer.feed(b"y" * 10000) == []
    assert len(framer._splitter._buffer) < 200 and len(framer._splitter._discarding) <= 64
    results = framer.feed(b"y" * 500 + b"\r\n\r\nremove\r\ncall_id: z\r\nfrom_tag: f\r\n\r\n")
    assert isinstance(results[0], RequestError) and results[1].call_id == "z"


@pytest.mark.parametrize("length", [99, 100, 101])
@pytest.mark.parametrize("split", [None, -1, -2, -3])
def test_line_limit_does_not_depend_on_how_crlf_arrives(length, split):
    line = b"a" * length + b"\r\n"
    chunks = [line] if split is None else [line[:split], line[split:]]
    splitter = LineSplitter(100)
    out = [item for chunk in chunks for item in splitter.feed(chunk)]
    if length <= 100:
        assert out == [b"a" * length]
    else:
        assert len(out) == 1 and isinstance(out[0], OverlongLine) and out[0].head == b"a" * 64
    assert not splitter.pending


def test_media_header():
    streams = parse_media("audio:192.0.2.10:6000:sendrecv:ice=no,,video:0.0.0.0:0:inactive:ice=yes:extra=1")
    assert [(s.media_type, s.ip, s.port, s.direction) for s in streams] == [
        ("audio", "192.0.2.10", 6000, "sendrecv"),
        ("video", "0.0.0.0", 0, "inactive"),
    ]
    assert not streams[0].uses_ice and streams[1].uses_ice and streams[1].parameters["extra"] == "1"
    assert streams[1].on_hold and not streams[0].on_hold
    for bad in [
        "audio:192.0.2.10:6000",
        "audio:192.0.2.10:x:sendrecv",
        "audio:192.0.2.10:6000:sendrecv:ice",
        "audio:1.2.3.4:70000:sendrecv",
    ]:
        with pytest.raises(HeaderError):
            parse_media(bad)


def test_signaling_ip_forms():
    assert parse_signaling_ip("192.0.2.10").caller_ip == "192.0.2.10"
    both = parse_signaling_ip("192.0.2.10_198.51.100.20")
    assert (both.caller_ip, both.destination_ip) == ("192.0.2.10", "198.51.100.20")
    json_form = parse_signaling_ip('{"signaling_ip": "192.0.2.10", "destination_ip": "198.51.100.20", "username": "alice@example.com"}')
    assert (json_form.caller_ip, json_form.destination_ip, json_form.username) == ("192.0.2.10", "198.51.100.20", "alice@example.com")
    assert parse_signaling_ip("2001:db8::1").caller_ip == "2001:db8::1"
    assert parse_signaling_ip('{"username": "bob"}') == SignalingInfo(None, None, "bob")  # every key is optional


@pytest.mark.parametrize(
    "value",
    [
        "[[[[",
        "[1, 2]",
        "proxy.example.com",
        "192.0.2.300",
        "192.0.2.10_",
        "192.0.2.10_nowhere",
        "a_b",
        '{"signaling_ip": "here"}',
        '{"signaling_ip": "192.0.2.10", "destination_ip": "198.51.100"}',
        '{"signaling_ip": 3232235521}',
    ],
)
def test_signaling_ip_that_names_no_ip_address_is_refused(value):
    with pytest.raises(HeaderError, match="is not an IP address"):
        parse_signaling_ip(value)


def test_relay_lines():
    assert relaylink.parse_relay_line("ping") == relaylink.Ping()
    assert relaylink.parse_relay_line("17 127.0.0.1 40000") == relaylink.Reply(17, "127.0.0.1 40000")
    assert relaylink.parse_relay_line('expired {"call_id": "x"}') == relaylink.Expired('{"call_id": "x"}')
    assert isinstance(relaylink.parse_relay_line("hello there"), relaylink.Garbage)
    assert relaylink.format_command("summary", 3) == b"summary 3\r\n\r\n"
    assert relaylink.format_command("update", 0, b"call_id: c\r\n") == b"update 0\r\ncall_id: c\r\n\r\n"


def test_relay_command_framer():
    framer = relaylink.CommandFramer()
    assert framer.line("update 4") is None
    assert framer.line("call_id: c") is None
    kind, command = framer.line("")
    assert kind == "command" and (command.command, command.seq, command.lines) == ("update", "4", ["call_id: c"])
    assert framer.line("bogus 5") == ("unknown", "5")
    assert framer.line("one two three")[0] == "bad"
    assert framer.line("") is None


def test_relay_sequence_numbers_are_ascii():
    assert isinstance(relaylink.parse_relay_line("\u0661\u0662 127.0.0.1 40000"), relaylink.Garbage)
    assert isinstance(relaylink.parse_relay_line("1_2 127.0.0.1 40000"), relaylink.Garbage)
    assert relaylink.parse_relay_line("12 x") == relaylink.Reply(12, "x")


def test_relay_command_framer_spoiled_and_bounded():
    framer = relaylink.CommandFramer()
    framer.line("update 4")
    framer.spoil("a line longer than 16384 bytes")
    framer.line("call_id: c")
    kind, command = framer.line("")
    assert kind == "command" and command.problem and command.lines == []
    framer.line("update 5")
    for number in range(100):
        framer.line(f"h{number}: v")
    kind, command = framer.line("")
    assert "more than 64" in command.problem and len(command.lines) == 64


def test_json_depth_is_limited_without_recursing():
    assert jsontext.loads('{"a": [1, {"b": "[[[[[[["}]}', max_depth=3) == {"a": [1, {"b": "[[[[[[["}]}
    for text in ("[" * 100000, '{"a": ' * 50 + "1" + "}" * 50):
        with pytest.raises(ValueError, match="nested deeper"):
            jsontext.loads(text, max_depth=16)
    with pytest.raises(ValueError):
        jsontext.loads("1" * 5000)  # Python's own limit on integer digits, still a ValueError


def test_statistics_records_are_checked_field_by_field():
    good = {"call_id": "c", "from_tag": "f", "duration": 3, "unknown": 1, "streams": [{"media_type": "audio", "caller_bytes": 10}]}
    parsed = statistics.parse_record(json.dumps(good))
    assert (parsed.call_id, parsed.from_tag, parsed.duration, parsed.to_tag, parsed.caller_ua) == ("c", "f", 3, None, "Unknown")
    (stream,) = parsed.streams
    assert (stream.media_type, stream.caller_bytes, stream.callee_bytes, stream.caller_codec) == ("audio", 10, 0, "Unknown")
    assert "unknown" not in parsed.as_json()  # fields nobody documents are not carried on
    for bad, problem in [
        ({"call_id": [], "from_tag": "f"}, "call_id has the wrong type"),
        ({"from_tag": "f"}, "lacks call_id"),
        ({"call_id": "c", "from_tag": "f", "duration": True}, "duration"),
        ({"call_id": "c", "from_tag": "f", "streams": {}}, "streams is not a list"),
        ({"call_id": "c", "from_tag": "f", "streams": [1]}, "stream 0 is not"),
        ({"call_id": "c", "from_tag": "f", "streams": [{"caller_bytes": "many"}]}, "caller_bytes"),
        ({"call_id": "c", "from_tag": "f", "streams": [{"extra": [[[1]]]}]}, "nested deeper"),
        (["c"], "not a JSON object"),
    ]:
        with pytest.raises(ValueError, match=problem):
            statistics.parse_record(json.dumps(bad))
    assert statistics.parse_sessions(json.dumps([good, good])) == statistics.SessionList([parsed, parsed])
    page = statistics.format_page([json.dumps(good)], 7)
    assert statistics.parse_sessions(page) == statistics.SessionList([parsed], 7)
    for bad in ('{"sessions": [], "next": -1}', '{"sessions": [], "next": true}', '{"sessions": {}}', '{"next": 3}'):
        with pytest.raises(ValueError):
            statistics.parse_sessions(bad)
    with pytest.raises(ValueError):
        statistics.parse_sessions(json.dumps({"call_id": "c"}))


def test_a_page_of_sessions_is_read_one_record_at_a_time():
    records = [{"call_id": f"c{number}", "from_tag": "f"} for number in range(3)]
    page = ' { "next" : 9 ,\n "sessions" : [ ' + " , ".join(json.dumps(record) for record in records) + " ] } "
    seen: list[str] = []
    assert statistics.scan_sessions(page, lambda record: seen.append(record.call_id)) == 9
    assert seen == ["c0", "c1", "c2"]
    # each record goes on as it is read: the ones before a bad record were had, and the page fails
    seen.clear()
    bad = statistics.format_page([json.dumps(records[0]), '{"call_id": 1, "from_tag": "f"}', json.dumps(records[2])], None)
    with pytest.raises(ValueError, match="call_id"):
        statistics.scan_sessions(bad, lambda record: seen.append(record.call_id))
    assert seen == ["c0"]
    for broken in ('{"sessions": [], "sessions": []}', '{"sessions": [],}', '{"sessions": [{}] ', '{"sessions": []} []', "[] x"):
        with pytest.raises(ValueError):
            statistics.scan_sessions(broken, seen.append)


def test_overlong_head_is_the_same_whichever_way_the_line_arrives():
    # found by test_properties: with a limit under 64 bytes the head took in the terminator
    line = b"\x00" * 18 + b"\n"
    whole = LineSplitter(16).feed(line)
    splitter = LineSplitter(16)
    pieces = splitter.feed(line[:17]) + splitter.feed(line[17:])
    assert whole == pieces == [OverlongLine(b"\x00" * 16, 16)]


# -- the typed records the relay writes and the fakes share


def test_update_replies_round_trip_and_garbage_is_named():
    for text in ("203.0.113.5 40000 0 40002", "203.0.113.5", "None"):
        assert parse_update_reply(text).format() == text
    assert parse_update_reply("None") == UpdateReply(None)
    assert parse_update_reply("203.0.113.5 40000 0").ports == (40000, 0)
    for garbage, named in (
        ("", "empty"),
        ("relay 40000", "not an IP"),
        ("203.0.113.5 4x", "not a port"),
        ("203.0.113.5 65536", "not a port"),
        ("203.0.113.5 ١", "not a port"),
    ):
        with pytest.raises(ValueError, match=named):
            parse_update_reply(garbage)


def test_session_records_are_what_the_checker_accepts():
    stream = StreamRecord(
        "audio", "closed", 0, "G711u", "G711a", 0, 10, 0.5, 200, 200, 1, 1, "203.0.113.5:40000", "203.0.113.5:40002", "Unknown", "Unknown"
    )
    typed = SessionRecord(call_id="c1", from_tag="ft", duration=10, streams=[stream])
    record = typed.as_json()
    # what a relay sends: the dispatcher's own fields and the listing's flag only when set
    assert set(record) == set(statistics.SESSION_FIELDS) - {"yours", "timed_out", "all_streams_ice", "statistics_at", "relay"} | {"streams"}
    assert set(record["streams"][0]) == set(statistics.STREAM_FIELDS) - {"path"}  # only a live stream has a path
    assert statistics.parse_record(json.dumps(record)) == typed
    stream.path = "kernel"
    assert typed.as_json()["streams"][0]["path"] == "kernel"
    assert statistics.parse_record(json.dumps(typed.as_json())) == typed
    stream.path = None
    typed.timed_out, typed.end_reason = True, "no-traffic timeout"
    assert statistics.parse_record(json.dumps(typed.as_json())) == typed
    assert typed.as_json()["timed_out"] is True


def test_an_update_whose_signaling_ip_is_no_address_is_one_error_for_the_proxy():
    from mediaproxy.testing import update

    (refused,) = RequestFramer().feed(update("c", "ft", media="audio:192.0.2.1:4000:sendrecv", signaling_ip="[[[["))
    assert isinstance(refused, RequestError) and "signaling_ip '[[[[' is not an IP address" in str(refused)
    (taken,) = RequestFramer().feed(update("c", "ft", media="audio:192.0.2.1:4000:sendrecv", signaling_ip="192.0.2.1_198.51.100.2"))
    assert taken.headers["signaling_ip"] == SignalingInfo("192.0.2.1", "198.51.100.2")

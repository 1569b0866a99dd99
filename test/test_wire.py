"""Pure wire formats: proxy request framing, header decoding, relay link lines."""

import pytest

from mediaproxy.wire import relaylink
from mediaproxy.wire.control import ProxyRequest, RequestError, RequestFramer
from mediaproxy.wire.headers import HeaderError, parse_media, parse_signaling_ip


def feed(framer, *chunks):
    results = []
    for chunk in chunks:
        results.extend(framer.feed(chunk))
    return results


def test_request_split_across_chunks_and_empty_values_dropped():
    data = b"update\r\ntype: request\r\ncall_id: c1\r\nto_tag: \r\nmedia_relay: \r\n\r\n"
    framer = RequestFramer()
    results = feed(framer, *(data[i : i + 1] for i in range(len(data))))
    (request,) = results
    assert isinstance(request, ProxyRequest)
    assert request.command == "update"
    assert request.lines == ["type: request", "call_id: c1"]
    assert "to_tag" not in request.headers
    assert request.encode_headers() == b"type: request\r\ncall_id: c1\r\n"
    assert not framer.pending


def test_pipelined_requests_and_stray_empty_lines():
    framer = RequestFramer()
    results = framer.feed(b"\r\n\r\nremove\r\ncall_id: a\r\n\r\nremove\r\ncall_id: b\r\n\r\n\r\n")
    assert [r.call_id for r in results] == ["a", "b"]


def test_values_containing_colon_space_split_at_the_first_one():
    (request,) = RequestFramer().feed(b'update\r\ncall_id: x: y\r\nsignaling_ip: {"a": 1}\r\n\r\n')
    assert request.headers["call_id"] == "x: y"
    assert request.headers["signaling_ip"] == '{"a": 1}'


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"update\r\nno colon\r\ncall_id: c\r\n\r\n", "no 'name: value' form"),
        (b"update\r\ncseq: 1\r\n\r\n", "without call_id"),
        (b"update\r\ncall_id: \xff\xfe\r\n\r\n", "not UTF-8"),
        (b"update\r\n" + b"a: b\r\n" * 70 + b"call_id: c\r\n\r\n", "more than 64 lines"),
        (b"update\r\ncall_id: " + b"x" * 20000 + b"\r\n\r\n", "longer than"),
    ],
)
def test_malformed_requests_give_one_error_each(data, problem):
    framer = RequestFramer()
    results = framer.feed(data)
    assert len(results) == 1 and isinstance(results[0], RequestError)
    assert problem in str(results[0])
    # the framer is ready for the next request
    (good,) = framer.feed(b"remove\r\ncall_id: ok\r\n\r\n")
    assert good.call_id == "ok"


def test_overlong_line_without_newline_is_discarded_incrementally():
    framer = RequestFramer(max_line=100)
    assert framer.feed(b"update\r\ncall_id: " + b"x" * 500) == []
    assert len(framer._buffer) < 200  # not buffered without bound
    results = framer.feed(b"y" * 500 + b"\r\n\r\nremove\r\ncall_id: z\r\n\r\n")
    assert isinstance(results[0], RequestError) and results[1].call_id == "z"


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
    assert parse_signaling_ip("[1, 2]").caller_ip == "[1, 2]"  # JSON that is not an object is not an error


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

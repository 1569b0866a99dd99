#!/usr/bin/env python3
"""Mutation fuzzing of every parser a peer or an operator feeds, seeded from the recorded Kamailio
captures in test/data and the sample configuration.

Each input goes to one target; an exception other than the target's documented error type is a
finding, printed with the input that caused it. Exit status 1 if there was any.

    python3 bench/fuzz.py [--inputs 1000000] [--seed 1] [--minutes 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import random
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout; an installed mediaproxy wins if present

from mediaproxy import configuration  # noqa: E402
from mediaproxy.relay.model import packets  # noqa: E402
from mediaproxy.testing import capture_requests  # noqa: E402
from mediaproxy.wire import headers, jsontext, relaylink, statistics  # noqa: E402
from mediaproxy.wire.control import ProxyRequest, RequestError, RequestFramer  # noqa: E402
from mediaproxy.wire.lines import LineSplitter  # noqa: E402

DATA = os.path.join(os.path.dirname(HERE), "test", "data")
INTERESTING = [
    b"\r\n", b"\n", b"\r", b": ", b",", b":", b"{", b"[" * 50, b"]", b"}", b'"', b"\\", b"\x00", b"\xff", "\u0661".encode(),
    b"9" * 30, b"-1", b"0", b"65536", b"4294967296", b"update", b"remove", b"call_id: ", b"media: ", b"cseq: ", b"type: ",
    b"signaling_ip: ", b"audio:1.2.3.4:6000:sendrecv", b"ice=yes", b"expired ", b"ping", b"1e999", b"NaN",
]  # fmt: skip


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    data = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        choice = rng.randrange(7)
        position = rng.randrange(len(data) + 1)
        if choice == 0 and data:  # flip bits
            index = rng.randrange(len(data))
            data[index] ^= 1 << rng.randrange(8)
        elif choice == 1:  # insert a token the parsers care about
            data[position:position] = rng.choice(INTERESTING)
        elif choice == 2 and data:  # delete a run
            del data[position : position + rng.randrange(1, 16)]
        elif choice == 3 and data:  # duplicate a run (repeated headers, lines)
            run = data[position : position + rng.randrange(1, 64)]
            data[position:position] = run * rng.randrange(1, 4)
        elif choice == 4:  # splice another seed in
            other = rng.choice(seeds)
            start = rng.randrange(len(other) + 1)
            data[position:position] = other[start : start + rng.randrange(1, 200)]
        elif choice == 5 and data:  # random byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 6:  # grow a line past its limit
            data[position:position] = b"x" * rng.choice((100, 16384, 17000))
    return bytes(data)


def target_proxy_requests(data: bytes, rng: random.Random) -> None:
    framer = RequestFramer()
    cut = rng.randrange(len(data) + 1)
    for item in framer.feed(data[:cut]) + framer.feed(data[cut:]):
        assert isinstance(item, (ProxyRequest, RequestError))


def target_relay_commands(data: bytes, rng: random.Random) -> None:
    framer = relaylink.CommandFramer()
    for line in LineSplitter(relaylink.MAX_COMMAND_LINE).feed(data):
        if not isinstance(line, bytes):
            framer.spoil("over-long")
            continue
        event = framer.line(line.decode("utf-8", "surrogateescape"))
        if event is not None and event[0] == "command" and event[1].problem is None and event[1].command in headers.COMMANDS:
            try:
                headers.decode(event[1].command, event[1].lines)
            except headers.HeaderError:
                pass


def target_relay_lines(data: bytes, rng: random.Random) -> None:
    text = data.decode("utf-8", "replace")
    message = relaylink.parse_relay_line(text)
    payload = message.statistics_json if isinstance(message, relaylink.Expired) else text
    for parse in (statistics.parse_record, statistics.parse_sessions, statistics.parse_summary):
        try:
            parse(payload)
        except ValueError:
            pass


def target_header_values(data: bytes, rng: random.Random) -> None:
    text = data.decode("utf-8", "replace")
    for parse in (headers.parse_media, headers.parse_signaling_ip, headers.parse_cseq, headers.parse_type):
        try:
            parse(text)
        except headers.HeaderError:
            pass
    try:
        jsontext.loads(text)
    except ValueError:
        pass


OPTIONS = [spec.metadata["parse"] for section in configuration.SECTIONS.values() for spec in dataclasses.fields(section)]


def target_config_values(data: bytes, rng: random.Random) -> None:
    text = data.decode("utf-8", "replace")
    try:
        rng.choice(OPTIONS)(text)
    except ValueError:
        pass


def target_packets(data: bytes, rng: random.Random) -> None:
    if packets.is_stun(data):
        packets.is_stun_binding_request(data)
    packets.codec_name(data)


TARGETS = {
    "proxy requests": target_proxy_requests,
    "relay commands": target_relay_commands,
    "relay lines": target_relay_lines,
    "header values": target_header_values,
    "config values": target_config_values,
    "packets": target_packets,
}


def seeds() -> dict[str, list[bytes]]:
    requests = [request.data for path in sorted(glob.glob(os.path.join(DATA, "*.txt"))) for request in capture_requests(path)]
    values = [line.split(b": ", 1)[1] for request in requests for line in request.split(b"\r\n") if b": " in line]
    record = {
        "call_id": "c", "from_tag": "f", "from_uri": "a", "to_tag": "t", "to_uri": "b", "start_time": 1.5, "duration": 3,
        "caller_ua": "u", "callee_ua": "u", "username": None,
        "streams": [{"media_type": "audio", "status": "closed", "caller_bytes": 200, "caller_codec": "G711u", "post_dial_delay": None}],
    }  # fmt: skip
    lines = [b"ping", b"7 127.0.0.1 40000", b"expired " + json.dumps(record).encode(), json.dumps([record, record]).encode()]
    commands = [b"update 4\r\n" + request.split(b"\r\n", 1)[1] for request in requests if request.startswith(b"update")]
    sample = os.path.join(os.path.dirname(HERE), "config.ini.sample")
    config = [line.split("=", 1)[1].strip().encode() for line in open(sample, encoding="utf-8") if line.startswith(";") and "=" in line]
    rtp = [bytes([0x80, pt]) + b"\x00" * 170 for pt in (0, 8, 18, 96)] + [b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12]
    return {
        "proxy requests": requests,
        "relay commands": commands,
        "relay lines": lines,
        "header values": values,
        "config values": config + [b"90", b"5m", b"40000:60000", b"0x4d50", b"0660"],
        "packets": rtp,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=15)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    corpus = seeds()
    names = list(TARGETS)
    every: list[bytes] = [item for items in corpus.values() for item in items]
    counts = dict.fromkeys(names, 0)
    findings = 0
    started = time.monotonic()
    deadline = started + args.minutes * 60
    done = 0
    for done in range(1, args.inputs + 1):
        name = names[done % len(names)]
        data = mutate(rng, rng.choice(corpus[name]), every)
        try:
            TARGETS[name](data, rng)
        except Exception:  # noqa: BLE001 - anything else than the documented errors is what we look for
            findings += 1
            if findings <= 20:
                print(f"FINDING in {name}: input {data[:300]!r}\n{traceback.format_exc()}")
        counts[name] += 1
        if done % 10000 == 0 and time.monotonic() > deadline:
            print(f"time limit of {args.minutes} min reached")
            break
    elapsed = time.monotonic() - started
    print(", ".join(f"{name}: {count}" for name, count in counts.items()))
    print(f"{done} inputs in {elapsed:.1f}s ({done / elapsed:.0f}/s), {findings} exceptions outside the documented error types")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What keeping the relay's sessions on disk costs: per call set-up, per compaction, per restart.

In process, through the relay's session manager with the sockets faked (``testing.FakeBinder``)
and the state file real, in a scratch directory on the disk the relay's state directory would use
(``--directory``, default the system's temporary directory):

- a call set-up (update request + update reply, one audio stream) with the sessions kept and
  without, in alternating rounds; the journal is fsync'ed every 50 ms of set-ups at the rate given
  (``--rate``), as the relay's timer does; the ratio is printed;
- folding the journal into a new snapshot with ``--sessions`` live sessions (the relay does it
  when the journal has four times as many lines as there are sessions);
- taking those sessions back at start (load the snapshot and journal, re-bind the ports).

    python3 bench/kept_state.py [--calls 5000] [--sessions 20000] [--rounds 3] [--rate 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet.task import Clock  # noqa: E402 - after the checkout is on the path

from mediaproxy import statefile  # noqa: E402
from mediaproxy.configuration import RelayConfig  # noqa: E402
from mediaproxy.datatypes import PortRange  # noqa: E402
from mediaproxy.relay.model import serialize  # noqa: E402
from mediaproxy.relay.sessions import SessionManager  # noqa: E402
from mediaproxy.testing import FakeBinder, headers  # noqa: E402

RELAY_IP = "203.0.113.5"


def manager_for(calls: int) -> SessionManager:
    config = RelayConfig(port_range=PortRange(10000, 10000 + 4 * calls + 8))
    return SessionManager(Clock(), config, FakeBinder(), lambda *_: None, RELAY_IP)


def set_up(manager: SessionManager, number: int) -> None:
    common = f"call_id: c{number}\nfrom_tag: ft\nfrom_uri: a@example.com\nto_uri: b@example.com\nuser_agent: ua\nsignaling_ip: 127.0.0.1\n"
    manager.update(headers(f"type: request\ncseq: 1\nto_tag: \n{common}media: audio:192.0.2.10:6000:sendrecv:ice=no"))
    manager.update(headers(f"type: reply\ncseq: 1\nto_tag: tt\n{common}media: audio:198.51.100.20:7000:sendrecv:ice=no"))


def state_file(directory: str, clock: Clock) -> statefile.StateFile:
    return statefile.StateFile(
        os.path.join(directory, "relay_sessions"),
        "sessions",
        serialize.VERSION,
        clock,
        "the relay's sessions",
        keep_encoded=True,
        key_text=serialize.key_text,
    )


def set_ups(calls: int, directory: str | None, rate: int) -> float:
    """Microseconds per call set-up, the sessions kept in ``directory`` (or not kept)."""
    manager = manager_for(calls)
    if directory is not None:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        manager.restore(state_file(directory, manager.clock), {})
    per_sync = max(1, int(rate * statefile.SYNC_DELAY))
    started = time.perf_counter()
    for number in range(calls):
        set_up(manager, number)
        if number % per_sync == per_sync - 1:
            manager.clock.advance(statefile.SYNC_DELAY)  # the relay's fsync timer
    manager.clock.advance(statefile.SYNC_DELAY)
    spent = time.perf_counter() - started
    manager.keeping.close()
    return spent / calls * 1e6


def at_size(sessions: int, directory: str) -> tuple[float, float, int]:
    """(ms to compact, ms to take back at start, snapshot bytes) with ``sessions`` live sessions."""
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    manager = manager_for(sessions)
    manager.restore(state_file(directory, manager.clock), {})
    for number in range(sessions):
        set_up(manager, number)
    manager.clock.advance(statefile.SYNC_DELAY)
    started = time.perf_counter()
    manager.keeping.state.compact()
    compacted = (time.perf_counter() - started) * 1e3
    size = os.path.getsize(os.path.join(directory, "relay_sessions"))
    manager.suspend()  # as a stopping relay that keeps its calls
    again = manager_for(sessions)
    started = time.perf_counter()
    state = state_file(directory, again.clock)
    restored = again.restore(state, state.load())
    taken_back = (time.perf_counter() - started) * 1e3
    assert restored == sessions, (restored, sessions)
    again.suspend()
    return compacted, taken_back, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="call set-ups per measurement (default: %(default)s)")
    parser.add_argument("--sessions", type=int, default=20_000, help="live sessions for compaction and restart (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--rate", type=int, default=2000, help="set-ups per second, for the fsync batching (default: %(default)s)")
    parser.add_argument("--directory", default=None, help="where the state file goes (default: the temporary directory)")
    args = parser.parse_args(argv)
    kept: list[float] = []
    not_kept: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mp-bench-", dir=args.directory) as scratch:
        for _ in range(args.rounds):
            not_kept.append(set_ups(args.calls, None, args.rate))
            kept.append(set_ups(args.calls, scratch, args.rate))
        compacted, taken_back, size = at_size(args.sessions, scratch)
    plain, with_state = statistics.median(not_kept), statistics.median(kept)
    print(f"call set-up, sessions not kept: {plain:.0f} µs (median of {json.dumps([round(value) for value in not_kept])})")
    print(f"call set-up, sessions kept:     {with_state:.0f} µs (median of {json.dumps([round(value) for value in kept])})")
    print(f"ratio kept / not kept: {with_state / plain:.2f}; keeping adds {with_state - plain:.0f} µs per call set-up")
    print(
        f"{args.sessions} sessions: snapshot {size / 1e6:.1f} MB, compaction {compacted:.0f} ms, taken back at start in {taken_back:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

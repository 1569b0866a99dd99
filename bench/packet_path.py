#!/usr/bin/env python3
"""Per-packet cost of the relay's userspace path, in process: the code a datagram runs through
from the socket's reader to the other side's send, without the sockets.

Calls are set up through the relay's session manager and fed packets as the socket reader hands
them on (``testing.FakeEndpoint.deliver``), so what is measured is MediaProxy's own Python per
packet. With ``--against REV`` the same measurement runs on that git revision too, in alternating
rounds in one run, and the ratio is printed (this machine is noisy; compare within a run):

    python3 bench/packet_path.py [--streams 200] [--packets 200000] [--rounds 3] [--against HEAD~1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(streams: int, packets: int) -> float:
    """Nanoseconds per relayed packet with ``streams`` established calls."""
    from twisted.internet.task import Clock  # the code under test is on sys.path only now

    from mediaproxy.configuration import RelayConfig
    from mediaproxy.datatypes import PortRange
    from mediaproxy.testing import FakeBinder, headers

    try:
        from mediaproxy.relay.sessions import SessionManager
    except ImportError:  # before the relay was split into model and plane
        from mediaproxy.relay.session import SessionManager

    clock = Clock()
    binder = FakeBinder()
    config = RelayConfig(port_range=PortRange(20000, 20000 + 8 * streams + 8))
    manager = SessionManager(clock, config, binder, lambda *_: None, "203.0.113.5")
    rtp = bytes([0x80, 0]) + b"\x00" * 170
    pairs = []
    for number in range(streams):
        common = f"call_id: c{number}\nfrom_tag: ft\nfrom_uri: a@example.com\nto_uri: b@example.com\nuser_agent: ua\n"
        # each party behind a NAT whose address the proxy saw its SIP come from (the usual case)
        offer = manager.update(
            headers(f"type: request\ncseq: 1\nto_tag: \n{common}signaling_ip: 192.0.2.99\nmedia: audio:192.0.2.10:6000:sendrecv:ice=no")
        )
        answer = manager.update(
            headers(
                f"type: reply\ncseq: 1\nto_tag: tt\n{common}signaling_ip: 198.51.100.99\nmedia: audio:198.51.100.20:7000:sendrecv:ice=no"
            )
        )
        caller, callee = binder.by_port[int(answer.split()[1])], binder.by_port[int(offer.split()[1])]
        caller_address, callee_address = ("192.0.2.99", 30000 + number), ("198.51.100.99", 30000 + number)
        caller.deliver(rtp, caller_address)
        callee.deliver(rtp, callee_address)
        pairs.append((caller, caller_address, callee, callee_address))
    rounds = max(packets // (2 * streams), 1)
    started = time.perf_counter()
    for _ in range(rounds):
        for caller, caller_address, callee, callee_address in pairs:
            caller.deliver(rtp, caller_address)
            callee.deliver(rtp, callee_address)
        for caller, _, callee, _ in pairs:
            caller.sent.clear()
            callee.sent.clear()
    return (time.perf_counter() - started) / (rounds * 2 * streams) * 1e9


def run_at(tree: str, streams: int, packets: int) -> float:
    """One measurement in a fresh interpreter on the code in ``tree``."""
    code = f"import sys; sys.path.insert(0, {tree!r}); sys.path.insert(0, {ROOT + '/bench'!r}); import packet_path; print(packet_path.measure({streams}, {packets}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return float(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="established calls (default: %(default)s)")
    parser.add_argument("--packets", type=int, default=200_000, help="packets per measurement (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--against", help="a git revision to measure side by side with this checkout")
    args = parser.parse_args(argv)
    trees = {"this checkout": ROOT}
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as scratch:
        if args.against:
            other = os.path.join(scratch, "tree")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", other, args.against], check=True)
            trees[args.against] = other
        try:
            results: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(args.rounds):
                for name, tree in trees.items():
                    results[name].append(run_at(tree, args.streams, args.packets))
        finally:
            if args.against:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", other], check=False)
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"{'code':>16} {'ns/packet (median)':>19}  rounds")
    for name, values in results.items():
        print(f"{name:>16} {medians[name]:>19.0f}  {json.dumps([round(value) for value in values])}")
    if args.against:
        print(f"ratio this checkout / {args.against}: {medians['this checkout'] / medians[args.against]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

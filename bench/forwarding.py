#!/usr/bin/env python3
"""Forwarding benchmark: N concurrent G.711-sized RTP streams through each relay, stepping N up.

Each stream is a caller and a callee socket in the generator namespace sending 50 packets/s
each way through the relay. Rounds alternate between our relay (userspace path), our relay
(kernel path) and rtpengine (userspace), on the same machine at the same time, and stop for a
system when its loss exceeds 0.1% or its N reaches --max-streams. Run as root:

    python3 bench/forwarding.py [--streams 50,100,200,400] [--seconds 5]
"""

from __future__ import annotations

import argparse
import resource
import select
import time

from common import PAYLOAD, OurStack, Rtpengine, cpu_seconds, generator_sockets, network, rss_kib

PACKET_INTERVAL = 0.02
LOSS_LIMIT = 0.001


def run_round(system, net, streams: int, seconds: float, round_number: int, interval: float = PACKET_INTERVAL) -> dict:
    first_port = 20000 + (round_number % 4) * 4000
    callers = generator_sockets(net, streams, first_port)
    callees = generator_sockets(net, streams, first_port + 1)
    call_ids = [f"bench-{round_number}-{index}" for index in range(streams)]
    targets = []
    for call_id, caller, callee in zip(call_ids, callers, callees):
        caller_side, callee_side = system.open(call_id, caller.getsockname(), callee.getsockname())
        targets.append((caller, caller_side, callee, callee_side))
    poller = select.epoll()
    for endpoint in (*callers, *callees):
        poller.register(endpoint.fileno(), select.EPOLLIN)
    by_fd = {endpoint.fileno(): endpoint for endpoint in (*callers, *callees)}
    packet = bytes([0x80, 0]) + bytes(PAYLOAD - 2)
    # warm-up: both sides speak so every relay has learnt every address (and made its kernel
    # entries) before we count
    for _ in range(max(10, int(max(0.2, streams * 0.0012) / interval))):
        for caller, caller_side, callee, callee_side in targets:
            callee.sendto(packet, callee_side)
            caller.sendto(packet, caller_side)
        time.sleep(interval)
    while _drain(poller, by_fd, 0.3):
        pass  # until the warm-up's packets are all in
    pid = system.relay_pid if isinstance(system, OurStack) else system.pid
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    sent = received = 0
    tick = started
    while tick - started < seconds:
        for caller, caller_side, callee, callee_side in targets:
            caller.sendto(packet, caller_side)
            callee.sendto(packet, callee_side)
        sent += 2 * streams
        tick += interval
        received += _drain(poller, by_fd, max(tick - time.monotonic(), 0))
    elapsed = time.monotonic() - started
    cpu = (cpu_seconds(pid) - cpu_before) / elapsed
    received += _drain(poller, by_fd, 0.5)  # stragglers still in flight
    rss = rss_kib(pid)
    for call_id in call_ids:
        system.close(call_id)
    poller.close()
    for endpoint in (*callers, *callees):
        endpoint.close()
    return {
        "system": system.name,
        "streams": streams,
        "offered_pps": sent / elapsed,
        "relayed_pps": received / elapsed,
        "loss": max(sent - received, 0) / sent if sent else 0.0,
        "cpu": cpu,
        "rss_mib": rss / 1024,
    }


def _drain(poller, by_fd: dict, timeout: float) -> int:
    count = 0
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        events = poller.poll(max(remaining, 0))
        if not events:
            if remaining <= 0:
                return count
            continue
        for fd, _ in events:
            endpoint = by_fd[fd]
            while True:
                try:
                    endpoint.recv(2048)
                    count += 1
                except BlockingIOError:
                    break
        if time.monotonic() >= deadline:
            return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="50,100,200,400,800", help="stream counts to step through (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=5, help="measured seconds per round (default: %(default)s)")
    parser.add_argument("--rate", type=int, default=50, help="packets/s per stream and direction (default: %(default)s, G.711)")
    parser.add_argument("--systems", default="userspace,kernel,rtpengine", help="which relays (default: %(default)s)")
    args = parser.parse_args(argv)
    steps = [int(value) for value in args.streams.split(",")]
    wanted = args.systems.split(",")
    net = network()
    systems = []
    try:
        # 20000-49999 is shared among our relays; rtpengine takes 50000 and up
        ours = [name for name in ("userspace", "kernel") if name in wanted]
        # each relay port is a descriptor: stay under the machine's hard limit
        share = min(30000 // max(len(ours), 1), resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 2000) // 2 * 2
        for index, name in enumerate(ours):
            systems.append(OurStack(net, name, f"{20000 + index * share}:{20000 + (index + 1) * share - 2}"))
        if "rtpengine" in wanted:
            systems.append(Rtpengine(net, 50000, 65534))
            systems[-1].name = "rtpengine"
        results = []
        active = list(systems)
        print(f"{'system':<10} {'streams':>7} {'offered pps':>12} {'relayed pps':>12} {'loss':>8} {'relay CPU':>9} {'RSS MiB':>8}")
        for round_number, streams in enumerate(steps):
            for system in list(active):
                row = run_round(system, net, streams, args.seconds, round_number, 1 / args.rate)
                results.append(row)
                print(
                    f"{row['system']:<10} {row['streams']:>7} {row['offered_pps']:>12.0f} {row['relayed_pps']:>12.0f} "
                    f"{row['loss']:>8.4%} {row['cpu']:>9.1%} {row['rss_mib']:>8.1f}",
                    flush=True,
                )
                if row["loss"] > LOSS_LIMIT:
                    active.remove(system)
            if not active:
                break
        print()
        for system in systems:
            clean = [row for row in results if row["system"] == system.name and row["loss"] <= LOSS_LIMIT]
            best = max(clean, key=lambda row: row["streams"], default=None)
            print(f"{system.name}: max streams with loss <= 0.1%: {best['streams'] if best else 0}")
        return 0
    finally:
        for system in systems:
            system.stop()
        net.remove()


if __name__ == "__main__":
    raise SystemExit(main())

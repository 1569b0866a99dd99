#!/usr/bin/env python3
"""Call set-up benchmark: update(request) + update(reply) + remove as fast as dispatcher + relay allow.

Several connections to the dispatcher's socket, like several proxy processes, each doing calls
one after another with the exact framing Kamailio's module uses. Reports set-ups/s, p50/p99 of
each request, and the relay's open files before and after (they must stay flat). Run as root:

    python3 bench/setup_rate.py [--connections 4] [--calls 5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from common import OurStack, cpu_seconds, one_stack, open_fds, rss_kib

from mediaproxy.testing import remove, update


def worker(stack: OurStack, number: int, calls: int, latencies: dict, errors: list) -> None:
    from deployment import Proxy  # noqa: PLC0415

    proxy = Proxy(stack.deployment.socket_path)
    try:
        for index in range(calls):
            call_id = f"setup-{number}-{index}@192.0.2.2"
            for kind, request in (
                ("offer", update(call_id, "ft", media="audio:192.0.2.2:6000:sendrecv:ice=no")),
                ("answer", update(call_id, "ft", "tt", kind="reply", media="audio:192.0.2.3:7000:sendrecv:ice=no")),
                ("remove", remove(call_id, "ft", "tt")),
            ):
                started = time.perf_counter()
                reply = proxy.request(request)
                latencies[kind].append(time.perf_counter() - started)
                if reply == "error":
                    errors.append((call_id, kind))
    finally:
        proxy.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] if ordered else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=4, help="proxy connections (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=5000, help="calls in all (default: %(default)s)")
    parser.add_argument("--log-level", help="set both programs' log level first (WARNING: without the per-call lines)")
    args = parser.parse_args(argv)
    with one_stack("setup", "30000:39998") as stack:
        if args.log_level:
            for command in (f"loglevel {args.log_level}", f"loglevel {args.log_level} 127.0.0.1"):
                assert "error" not in stack.deployment.management(command.encode()), command
        relay_fds_before, dispatcher_fds_before = open_fds(stack.relay_pid), open_fds(stack.dispatcher_pid)
        latencies: dict[str, list[float]] = {"offer": [], "answer": [], "remove": []}
        errors: list = []
        per_connection = args.calls // args.connections
        threads = [
            threading.Thread(target=worker, args=(stack, number, per_connection, latencies, errors)) for number in range(args.connections)
        ]
        cpu_before = {
            name: cpu_seconds(pid)
            for name, pid in (("relay", stack.relay_pid), ("dispatcher", stack.dispatcher_pid), ("client", os.getpid()))
        }
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        calls = per_connection * args.connections
        cpu = {
            name: (cpu_seconds(pid) - cpu_before[name]) / calls * 1e6
            for name, pid in (("relay", stack.relay_pid), ("dispatcher", stack.dispatcher_pid), ("client", os.getpid()))
        }
        print(f"{calls} calls over {args.connections} connections in {elapsed:.2f}s: {calls / elapsed:.0f} set-ups/s, {len(errors)} errors")
        print("CPU per set-up: " + ", ".join(f"{name} {value:.0f} µs" for name, value in cpu.items()))
        print(f"{'request':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for kind, values in latencies.items():
            print(f"{kind:<8} {percentile(values, 0.5) * 1000:>8.2f} {percentile(values, 0.99) * 1000:>8.2f} {max(values) * 1000:>8.2f}")
        print(
            f"open files: relay {relay_fds_before} -> {open_fds(stack.relay_pid)}, "
            f"dispatcher {dispatcher_fds_before} -> {open_fds(stack.dispatcher_pid)}; "
            f"RSS relay {rss_kib(stack.relay_pid) / 1024:.1f} MiB, dispatcher {rss_kib(stack.dispatcher_pid) / 1024:.1f} MiB"
        )
        all_latencies = [value for values in latencies.values() for value in values]
        print(f"all requests: p50 {statistics.median(all_latencies) * 1000:.2f} ms, p99 {percentile(all_latencies, 0.99) * 1000:.2f} ms")
        return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

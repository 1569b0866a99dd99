#!/usr/bin/env python3
"""Call set-up benchmark: update(request) + update(reply) + remove as fast as dispatcher + relay allow.

Several connections to the dispatcher's socket, like several proxy processes, each doing calls
one after another with the exact framing Kamailio's module uses. Reports set-ups/s, p50/p99 of
each request, and the relay's open files before and after (they must stay flat). Run as root:

    python3 bench/setup_rate.py [--connections 4] [--calls 5000] [--against REV [--rounds 3]]

With ``--against`` the same runs on another git revision too (checked out aside), in alternating
rounds, and the ratios are printed: the machine's noise moves both alike.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time

from common import checked_out, cpu_seconds, one_stack, open_fds, rss_kib

import harness
from mediaproxy.testing import remove, update


def worker(socket_path: str, number: int, calls: int, results) -> None:  # a multiprocessing Connection
    """One proxy process: its own connection, one call after another; its latencies and errors sent back."""
    from deployment import Proxy

    latencies: dict[str, list[float]] = {"offer": [], "answer": [], "remove": []}
    errors = []
    try:
        proxy = Proxy(socket_path)
    except OSError as error:
        results.send((latencies, [("connect", str(error))]))
        return
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
        results.send((latencies, errors))
        results.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] if ordered else 0.0


def measure(args: argparse.Namespace, quiet: bool = False) -> dict:
    """One stack, ``args.calls`` calls over ``args.connections`` proxy processes: the figures, printed unless ``quiet``."""
    with one_stack("setup", "30000:39998") as stack:
        if args.log_level:
            for command in (f"loglevel {args.log_level}", f"loglevel {args.log_level} 127.0.0.1"):
                assert "error" not in stack.deployment.management(command.encode()), command
        relay_fds_before, dispatcher_fds_before = open_fds(stack.relay_pid), open_fds(stack.dispatcher_pid)
        per_connection = args.calls // args.connections
        # processes, as Kamailio's children are (each with its connection): threads would queue on one interpreter lock
        context = multiprocessing.get_context("fork")
        pipes = [context.Pipe(duplex=False) for _ in range(args.connections)]
        workers = [
            context.Process(target=worker, args=(stack.deployment.socket_path, number, per_connection, sending))
            for number, (_receiving, sending) in enumerate(pipes)
        ]
        cpu_before = {name: cpu_seconds(pid) for name, pid in (("relay", stack.relay_pid), ("dispatcher", stack.dispatcher_pid))}
        clients_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        for process in workers:
            process.start()
        for _receiving, sending in pipes:
            sending.close()  # the workers' ends: a worker that dies is an EOFError here, not a wait
        latencies: dict[str, list[float]] = {"offer": [], "answer": [], "remove": []}
        errors: list = []
        for receiving, _sending in pipes:
            their_latencies, their_errors = receiving.recv()
            for kind, values in their_latencies.items():
                latencies[kind].extend(values)
            errors.extend(their_errors)
        elapsed = time.perf_counter() - started
        for process in workers:
            process.join()
        clients = resource.getrusage(resource.RUSAGE_CHILDREN)
        calls = per_connection * args.connections
        cpu = {
            name: (cpu_seconds(pid) - cpu_before[name]) / calls * 1e6
            for name, pid in (("relay", stack.relay_pid), ("dispatcher", stack.dispatcher_pid))
        }
        cpu["proxy clients"] = (clients.ru_utime + clients.ru_stime - clients_before.ru_utime - clients_before.ru_stime) / calls * 1e6
        all_latencies = [value for values in latencies.values() for value in values]
        result = {"rate": calls / elapsed, "cpu": cpu, "p99": percentile(all_latencies, 0.99), "errors": len(errors)}
        if quiet:
            return result
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
        print(f"all requests: p50 {statistics.median(all_latencies) * 1000:.2f} ms, p99 {result['p99'] * 1000:.2f} ms")
        return result


def side_by_side(args: argparse.Namespace) -> int:
    """This checkout and ``args.against`` (a git revision, checked out aside) in alternating rounds."""
    trees = {"this checkout": harness.ROOT}
    with checked_out(args.against) as other:
        trees[args.against] = other
        results: dict[str, list[dict]] = {name: [] for name in trees}
        try:
            for _ in range(args.rounds):
                for name, tree in trees.items():
                    harness.ROOT = tree  # where the programs are started from
                    results[name].append(measure(args, quiet=True))
        finally:
            harness.ROOT = trees["this checkout"]
    print(f"{args.calls} calls over {args.connections} connections, {args.rounds} alternating rounds (medians):")
    print(f"{'code':>16} {'set-ups/s':>10} {'relay µs':>9} {'dispatcher µs':>14} {'p99 ms':>7}  set-ups/s each round")
    medians = {}
    for name, rounds in results.items():
        rate = statistics.median(r["rate"] for r in rounds)
        relay = statistics.median(r["cpu"]["relay"] for r in rounds)
        dispatcher = statistics.median(r["cpu"]["dispatcher"] for r in rounds)
        p99 = statistics.median(r["p99"] for r in rounds) * 1000
        medians[name] = (rate, relay + dispatcher)
        print(f"{name:>16} {rate:>10.0f} {relay:>9.0f} {dispatcher:>14.0f} {p99:>7.2f}  {[round(r['rate']) for r in rounds]}")
    (rate, cpu), (other_rate, other_cpu) = medians["this checkout"], medians[args.against]
    # a tiny run may take less CPU than one of /proc's clock ticks: then there is no ratio to give
    cpu_ratio = f"{cpu / other_cpu:.2f}x" if other_cpu else "not resolved (no clock tick measured)"
    print(f"this checkout / {args.against}: set-ups/s {rate / other_rate:.2f}x, CPU per set-up (relay + dispatcher) {cpu_ratio}")
    return 1 if any(r["errors"] for rounds in results.values() for r in rounds) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=4, help="proxy connections (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=5000, help="calls in all (default: %(default)s)")
    parser.add_argument("--log-level", help="set both programs' log level first (WARNING: without the per-call lines)")
    parser.add_argument("--against", help="a git revision to measure side by side with this checkout")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds with --against (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.against:
        return side_by_side(args)
    return 1 if measure(args)["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

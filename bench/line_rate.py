#!/usr/bin/env python3
"""Line-rate benchmark: CPU per relayed packet and the maximum relayed rate of each path.

A C generator (bench/rtpgen.c, built here with gcc) offers 172-byte RTP packets on every flow of
N streams (each way) at a set rate, from one raw socket with sendmmsg: far more than any relay
here can take. Delivery is counted by nftables in the generator's namespace, per relay address,
where what comes back is counted and dropped before any socket: no receiver in the loop.

Each round offers one rate to each system in turn (alternating order): a blackhole (an address
of the relay namespace that drops what it gets: the generator's and the veth's own cost), our
relay's kernel path, our relay's userspace path, rtpengine in userspace (two threads; on request
"rtpengine-1", one thread, which leaves the generator a core of its own). The whole machine's
CPU (every core, softirq included, from /proc/stat) is read around each run; a system's cost is
the machine's less what the generator costs at that rate (the blackhole's cost per packet
offered), and its cost per packet is that over the packets it relayed. Run as root:

    bench/line_rate.py [--streams 1000] [--rates 50000,100000,150000,200000,250000] [--seconds 5]

Our userspace path runs as configured by default (worker processes, one per core) and, as
"userspace-1", with everything in the relay process (``userspace_workers = 0``). With
``--against REV`` that in-process path of another git revision (checked out aside) runs too, in
the same rounds, and the ratios of the two are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import ADDRESSES, GENERATOR_IP, PAYLOAD, OurStack, Rtpengine, checked_out, cpu_seconds, network

import harness

LOSS_LIMIT = 0.001
BLACKHOLE = "192.0.2.99"
HERE = Path(__file__).resolve().parent


def build_generator(directory: str) -> str:
    if shutil.which("gcc") is None:
        raise SystemExit("gcc is missing: apt-get install build-essential")
    binary = os.path.join(directory, "rtpgen")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", binary, str(HERE / "rtpgen.c")], check=True)
    return binary


def machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy (every core; user, system, irq, softirq, steal)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Counters:
    """nftables in the generator's namespace: per source address, what came back (then dropped)."""

    def __init__(self, net, sources: list[str]) -> None:
        self.net = net
        rules = "".join(f"ip saddr {source} counter drop\n" for source in sources)
        script = (
            "table ip mpbench {\n"
            " chain back { type filter hook prerouting priority -300; policy accept;\n" + rules + " }\n"
            # what the generator sends needs no connection tracking
            " chain out { type filter hook output priority -300; policy accept;\nnotrack\n }\n"
            "}\n"
        )
        net.run("gen", f"nft -f - <<'EOF'\n{script}EOF")

    def read(self) -> dict[str, int]:
        listing = json.loads(self.net.run("gen", "nft -j list table ip mpbench").stdout)
        found = {}
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            source = counter = None
            for expression in rule["expr"]:
                if "match" in expression:
                    source = expression["match"]["right"]
                if "counter" in expression:
                    counter = expression["counter"]["packets"]
            if source is not None and counter is not None:
                found[source] = counter
        return found


class Blackhole:
    """An address in the relay namespace that drops what it gets: what the generator costs."""

    name = "blackhole"
    source = None

    def __init__(self, net) -> None:
        net.run("relay", f"ip addr add {BLACKHOLE}/32 dev lo")
        net.run(
            "relay",
            "nft -f - <<'EOF'\ntable ip mphole {\n chain in { type filter hook prerouting priority -300; "
            f"ip daddr {BLACKHOLE} counter drop\n }}\n}}\nEOF",
        )

    def open(self, call_id: str, caller: tuple[str, int], callee: tuple[str, int]) -> tuple[tuple[str, int], tuple[str, int]]:
        return (BLACKHOLE, caller[1]), (BLACKHOLE, callee[1])

    def stop(self) -> None:
        pass


def write_flows(path: str, flows: list[tuple[tuple[str, int], tuple[str, int]]]) -> None:
    with open(path, "w") as stream:
        for (source_ip, source_port), (destination_ip, destination_port) in flows:
            stream.write(f"{source_ip} {source_port} {destination_ip} {destination_port}\n")


def generate(net, binary: str, flows_file: str, rate: float, seconds: float) -> tuple[int, float]:
    done = net.run("gen", f"{binary} {flows_file} {rate:.0f} {seconds} {PAYLOAD}")
    match = re.search(r"sent (\d+) packets in ([\d.]+) seconds", done.stdout)
    if match is None:
        raise SystemExit(f"rtpgen failed: {done.stdout} {done.stderr}")
    return int(match.group(1)), float(match.group(2))


def run(system, net, binary: str, flows_file: str, counters: Counters, rate: float, seconds: float) -> dict:
    pid = getattr(system, "relay_pid", None) or getattr(system, "pid", None)
    before = counters.read().get(system.source, 0) if system.source else 0
    busy, process = machine_busy(), cpu_seconds(pid) if pid else 0.0
    sent, elapsed = generate(net, binary, flows_file, rate, seconds)
    busy, process = machine_busy() - busy, (cpu_seconds(pid) - process) if pid else 0.0
    time.sleep(0.3)  # what is still on its way back
    relayed = counters.read().get(system.source, 0) - before if system.source else 0
    return {
        "system": system.name,
        "rate": rate,
        "offered_pps": sent / elapsed,
        "relayed_pps": relayed / elapsed,
        "loss": max(sent - relayed, 0) / sent if system.source and sent else 0.0,
        "machine_cores": busy / elapsed,
        "process_cores": process / elapsed,
    }


def clean(results: list[dict], name: str) -> list[dict]:
    """A system's runs that lost < 0.1%."""
    return [row for row in results if row["system"] == name and row["loss"] < LOSS_LIMIT]


def maximum(results: list[dict], name: str) -> float:
    """The most a system relayed in a clean run (0 if it had none)."""
    return max((row["relayed_pps"] for row in clean(results, name)), default=0)


def compare(results: list[dict], ours: str, other: str) -> None:
    """The two in-process paths' CPU per relayed packet at each rate where both lost < 0.1%, and
    their maxima at < 0.1% loss."""
    by_rate: dict[float, dict[str, dict]] = {}
    for row in results:
        by_rate.setdefault(row["rate"], {})[row["system"]] = row
    ratios = []
    for rate, rows in by_rate.items():
        # a cost of zero or less is under what /proc/stat's clock ticks resolve (a short, slow run)
        if (
            ours in rows
            and other in rows
            and all(rows[name]["loss"] < LOSS_LIMIT and rows[name]["us_per_packet"] > 0 for name in (ours, other))
        ):
            ratio = rows[ours]["us_per_packet"] / rows[other]["us_per_packet"]
            ratios.append(ratio)
            offered = f"{rate:.0f} pps" if rate else "as fast as it can"
            print(f"offered {offered}: CPU per relayed packet {ours} / {other}: {ratio:.2f}x")
    maxima = [maximum(results, name) for name in (ours, other)]
    if maxima[1]:
        print(f"max relayed at < 0.1% loss, {ours} / {other}: {maxima[0] / maxima[1]:.2f}x")
    if ratios:
        print(f"CPU per relayed packet, {ours} / {other}, median over the rates: {sorted(ratios)[len(ratios) // 2]:.2f}x")
    else:
        print(f"CPU per relayed packet, {ours} / {other}: no rate that both carried clean at a cost the CPU readings resolve")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="streams (two flows each) per system (default: %(default)s)")
    parser.add_argument(
        "--rates", default="50000,100000,150000,200000,250000", help="offered packets/s to step through; 0: as fast as the generator can"
    )
    parser.add_argument("--seconds", type=float, default=5, help="seconds per run (default: %(default)s)")
    parser.add_argument(
        "--systems",
        default="kernel,userspace,userspace-1,rtpengine",
        help="which relays (default: %(default)s; userspace-1: our userspace path without worker processes; "
        "rtpengine-1, on request: rtpengine with one thread)",
    )
    parser.add_argument("--against", help="a git revision whose userspace-1 runs in the same rounds, for the ratios")
    args = parser.parse_args(argv)
    rates = [float(value) for value in args.rates.split(",")]
    wanted = args.systems.split(",")
    streams = args.streams
    if 2 * streams * len(wanted) + 2000 > resource.getrlimit(resource.RLIMIT_NOFILE)[1]:
        raise SystemExit("too many streams for the descriptor limit")
    net = network()
    systems: list = []
    aside = contextlib.ExitStack()  # revisions checked out aside, removed once their programs stopped
    directory = tempfile.mkdtemp(prefix="mp-bench-line-")
    try:
        binary = build_generator(directory)
        blackhole = Blackhole(net)
        systems.append(blackhole)
        ours = {
            "kernel": ("kernel", ""),
            "userspace": ("userspace", ""),  # worker processes, one per core (the default)
            "userspace-1": ("userspace", "userspace_workers = 0\n"),  # everything in the relay process
            "userspace-2": ("userspace", "userspace_workers = 2\n"),  # two worker processes, whatever the cores
        }
        # a system is idle while the others run (up to two rounds' worth of them between its own
        # runs): no call may end for want of media before the last round
        outlast = int(len(rates) * (len(wanted) + 2) * (args.seconds + 5)) + 600
        for index, name in enumerate(name for name in ours if name in wanted):
            low = 20000 + index * 10000
            forwarding, extra = ours[name]
            stack = OurStack(net, forwarding, f"{low}:{low + 4 * streams + 100}", name=name, extra=extra, stream_timeout=outlast)
            systems.append(stack)  # at once: whatever fails next, the finally below stops its programs
            stack.source = ADDRESSES[name]
        if args.against:
            harness.ROOT = aside.enter_context(checked_out(args.against))  # where its programs start from
            try:
                stack = OurStack(
                    net,
                    "userspace",
                    f"15000:{15000 + 4 * streams + 100}",
                    name="against",
                    extra=ours["userspace-1"][1],
                    stream_timeout=outlast,
                )
            finally:
                harness.ROOT = str(HERE.parent)
            systems.append(stack)
            stack.name, stack.source = args.against[:10], ADDRESSES["against"]
        # each binds its own address, so both may use the same ports
        for name, threads in (("rtpengine", 2), ("rtpengine-1", 1)):
            if name in wanted:
                engine = Rtpengine(net, 50000, 65534, threads=threads, name=name, timeout=outlast)
                systems.append(engine)
                engine.name, engine.source = name, ADDRESSES[name]
        counters = Counters(net, [system.source for system in systems if system.source])
        files = {}
        for system in systems:
            flows = []
            for index in range(streams):
                caller, callee = (GENERATOR_IP, 10000 + 2 * index), (GENERATOR_IP, 10001 + 2 * index)
                caller_side, callee_side = system.open(f"line-{index}", caller, callee)
                flows += [(caller, caller_side), (callee, callee_side)]
            files[system.name] = os.path.join(directory, f"{system.name}.flows")
            write_flows(files[system.name], flows)
            if system.source:  # every relay learns both sides (and our kernel path makes its entries)
                generate(net, binary, files[system.name], min(20 * len(flows), 100000), 1.0)
        time.sleep(1)
        print(f"{streams} streams ({2 * streams} flows) per system, {PAYLOAD}-byte payloads, {args.seconds:g} s per run\n")
        print(
            f"{'system':<10} {'offered pps':>12} {'relayed pps':>12} {'loss':>8} {'machine cores':>13} {'relay cores':>11} {'µs/packet':>9}"
        )
        results = []
        for round_number, rate in enumerate(rates):
            order = systems[round_number % len(systems) :] + systems[: round_number % len(systems)]
            rows = {system.name: run(system, net, binary, files[system.name], counters, rate, args.seconds) for system in order}
            hole = rows["blackhole"]
            generator_per_packet = hole["machine_cores"] / hole["offered_pps"] if hole["offered_pps"] else 0.0
            for system in systems:
                row = rows[system.name]
                row["rate"] = rate
                own = row["machine_cores"] - generator_per_packet * row["offered_pps"]
                row["us_per_packet"] = own / row["relayed_pps"] * 1e6 if row["relayed_pps"] else 0.0
                results.append(row)
                print(
                    f"{row['system']:<10} {row['offered_pps']:>12.0f} {row['relayed_pps']:>12.0f} {row['loss']:>8.3%} "
                    f"{row['machine_cores']:>13.2f} {row['process_cores']:>11.2f} "
                    + (f"{row['us_per_packet']:>9.2f}" if system.source else f"{generator_per_packet * 1e6:>9.2f} (generator)"),
                    flush=True,
                )
            print()
        for system in systems[1:]:
            costs = sorted(row["us_per_packet"] for row in clean(results, system.name)) or [0.0]
            print(
                f"{system.name}: max relayed at < 0.1% loss: {maximum(results, system.name):.0f} pps; "
                f"CPU per relayed packet (median over clean runs): {costs[len(costs) // 2]:.2f} µs"
            )
        if args.against:
            compare(results, "userspace-1", args.against[:10])
        return 0
    finally:
        for system in systems:
            system.stop()
        aside.close()
        net.remove()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Memory benchmark: RSS of the dispatcher and the relay with 0 and then more established sessions.

Sessions are offered and answered through the proxy protocol (no media), so each holds its four
relay sockets. The relay's ``stream_timeout`` is set to outlast the run, as a call whose media
flows through the kernel is never timed out by the relay process (with the stacks' usual 60 s,
every session would have ended before a settle of a minute was over), and each reading checks
that the relay still holds every session's sockets. The relay needs 4 file descriptors per
session: on a machine whose hard RLIMIT_NOFILE is lower than 4 x sessions the largest step
cannot be reached, and the script says so. Run as root:

    python3 bench/memory.py [--sessions 1000,5000]
"""

from __future__ import annotations

import argparse
import resource
import time

from common import one_stack, open_fds, rss_kib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1000,5000", help="session counts to reach (default: %(default)s)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0,
        help="seconds the sessions stay idle before RSS is read (default: %(default)s; the relay deflates what it keeps of them every minute, and the dispatcher pulls their statistics every minute)",
    )
    args = parser.parse_args(argv)
    steps = [int(value) for value in args.sessions.split(",")]
    hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # the relay needs a descriptor per port: fit the range under the machine's hard limit
    ports = min(40000, (hard_limit - 2000) // 2 * 2)
    # no session may time out while the sessions are set up and settle
    timeout = int(max(steps) / 50 + args.settle * len(steps)) + 600
    with one_stack("memory", f"20000:{20000 + ports}", stream_timeout=timeout) as stack:
        idle_fds = open_fds(stack.relay_pid)
        rows = [(0, rss_kib(stack.dispatcher_pid), rss_kib(stack.relay_pid))]
        opened = 0
        for target in steps:
            if 4 * target > ports:
                print(f"skipping {target} sessions: they need {4 * target} ports and descriptors; the hard limit here is {hard_limit}")
                continue
            while opened < target:
                stack.open(f"memory-{opened}", ("192.0.2.2", 6000 + 2 * (opened % 1000)), ("192.0.2.3", 7000))
                opened += 1
            time.sleep(args.settle)  # idle sessions, as a relay holds them most of their life
            rows.append((opened, rss_kib(stack.dispatcher_pid), rss_kib(stack.relay_pid)))
            held = open_fds(stack.relay_pid) - idle_fds
            if held < 4 * opened:
                raise SystemExit(f"the relay holds {held} sockets for {opened} sessions: sessions ended during the run")
        # per session two ways: from the idle start (with what the first sessions cost once: code
        # paths first run, the first statistics pull's working set) and from the step before (what
        # one more session costs)
        print(
            f"{'sessions':>8} {'dispatcher MiB':>15} {'relay MiB':>10} {'relay KiB/session':>18} {'(from previous step)':>21}"
            f" {'dispatcher KiB/call':>20} {'(from previous step)':>21}"
        )
        previous = rows[0]
        for sessions, dispatcher, relay in rows:
            if not sessions:
                print(f"{sessions:>8} {dispatcher / 1024:>15.1f} {relay / 1024:>10.1f}")
                continue
            added = sessions - previous[0]
            print(
                f"{sessions:>8} {dispatcher / 1024:>15.1f} {relay / 1024:>10.1f}"
                f" {(relay - rows[0][2]) / sessions:>18.2f} {(relay - previous[2]) / added:>21.2f}"
                f" {(dispatcher - rows[0][1]) / sessions:>20.2f} {(dispatcher - previous[1]) / added:>21.2f}"
            )
            previous = (sessions, dispatcher, relay)
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

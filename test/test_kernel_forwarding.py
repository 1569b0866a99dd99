"""Kernel forwarding in network namespaces: a caller behind a NAT, the relay, a callee
(``netns.relay_behind_nat``).

The dispatcher and relay run in the relay's namespace, where the test sets a short UDP stream
timeout so that an idle entry goes away in seconds. The same call runs once with the kernel
path and once in userspace; both must account exactly the same statistics.
"""

import json
import sqlite3

import pytest
from deployment import Deployment, wait_until
from netns import (
    NAT_CALLEE_IP,
    NAT_CALLER_IP,
    NAT_PUBLIC_IP,
    NAT_RELAY_IP,
    Topology,
    in_namespace,
    relay_behind_nat,
    require_root_and_tools,
    rtp,
    udp_socket,
)

from mediaproxy.relay.plane.conntrack import Conntrack
from mediaproxy.testing import remove, update

RELAY_IP = NAT_RELAY_IP
CALLER = (NAT_CALLER_IP, 5000)
CALLEE = (NAT_CALLEE_IP, 7000)
IDLE_TIMEOUT = 3
PACKETS = 40
WARM_UP = 5
MARK = 0x4D50


@pytest.fixture(scope="module")
def topology():
    require_root_and_tools()
    network = relay_behind_nat(udp_stream_timeout=IDLE_TIMEOUT)
    yield network
    network.remove()


def deployment(tmp_path, namespace, forwarding, port_range):
    """Dispatcher and relay in the relay's namespace, accounting to SQLite; the programs and the database."""
    database = tmp_path / "accounting.sqlite"
    programs = Deployment(
        tmp_path,
        f"[Relay]\nrelay_ip = {RELAY_IP}\nforwarding = {forwarding}\nport_range = {port_range}\n"
        f"[Dispatcher]\naccounting = database\n[Database]\ndburi = sqlite://{database}\n",
        namespace=namespace,
    )
    return programs, database


def run_call(tmp_path, topology, forwarding):
    """One call through the relay; returns (accounting record, entry counters seen, relay log)."""
    namespace = topology.name("relay")
    programs, database = deployment(tmp_path, namespace, forwarding, "40000:40100")
    caller = udp_socket(topology.name("caller"), CALLER)
    callee = udp_socket(topology.name("callee"), CALLEE)
    try:
        programs.start()
        proxy = programs.proxy()
        call_id = f"kernel-{forwarding}@example.com"
        offer = proxy.request(
            update(call_id, "ft", media=f"audio:{CALLER[0]}:{CALLER[1]}:sendrecv:ice=no", dialog_id="7:8", signaling_ip=NAT_PUBLIC_IP)
        )
        answer = proxy.request(
            update(call_id, "ft", "tt", kind="reply", media=f"audio:{CALLEE[0]}:{CALLEE[1]}:sendrecv:ice=no", signaling_ip=CALLEE[0])
        )
        (relay_ip, callee_facing), (_, caller_facing) = offer.split(), answer.split()
        assert relay_ip == RELAY_IP
        to_caller_side, to_callee_side = (RELAY_IP, int(caller_facing)), (RELAY_IP, int(callee_facing))
        # the private SDP addresses are not routable: each side is learnt from its first packet
        callee.sendto(rtp(0, 8), to_callee_side)
        caller.sendto(rtp(0, 0), to_caller_side)
        data, source = callee.recvfrom(2048)
        assert (data, source) == (rtp(0, 0), to_callee_side)

        def exchange(first, last):
            for sequence in range(first, last + 1):
                caller.sendto(rtp(sequence, 0), to_caller_side)
                assert callee.recvfrom(2048) == (rtp(sequence, 0), to_callee_side)
                callee.sendto(rtp(sequence, 8), to_callee_side)
                assert caller.recvfrom(2048) == (rtp(sequence, 8), to_caller_side)

        # the packets right after the entry appears may still be queued on the relay's sockets
        exchange(1, WARM_UP)
        before = in_namespace(namespace, lambda: Conntrack(MARK).snapshot())
        exchange(WARM_UP + 1, PACKETS)
        after = in_namespace(namespace, lambda: Conntrack(MARK).snapshot())
        entries = {key: (before.get(key), counters) for key, counters in after.items()}
        # media stops: the entry (or the userspace idle check) times out and the call expires
        programs.dispatcher.wait_for_log(f"Call {call_id} expired on relay", timeout=30)
        wait_until(lambda: _rows(database), "the accounting record")
        (record,) = _rows(database)
        return record, entries, programs.relay.output()
    finally:
        programs.kill()
        caller.close()
        callee.close()


def _rows(database):
    try:
        return [json.loads(info) for (info,) in sqlite3.connect(database).execute("SELECT info FROM media_sessions")]
    except sqlite3.OperationalError:
        return []


def comparable(record):
    (stream,) = record["streams"]
    # end_time is when the expiry was noticed: the kernel reaps idle entries up to ~10 s late
    return {key: value for key, value in stream.items() if key not in ("caller_local", "callee_local", "post_dial_delay", "end_time")}


def test_kernel_forwards_counts_and_expires_like_userspace(tmp_path, topology):
    kernel_record, entries, kernel_log = run_call(tmp_path / "kernel", topology, "kernel")
    assert "Forwarding media in the kernel" in kernel_log
    # once the entry is there, every packet goes through it and none reaches our sockets
    ((before, after),) = entries.values()
    size = len(rtp(0, 0)) + 28
    steady = PACKETS - WARM_UP
    assert (after.orig_packets - before.orig_packets, after.orig_bytes - before.orig_bytes) == (steady, steady * size)
    assert (after.reply_packets - before.reply_packets, after.reply_bytes - before.reply_bytes) == (steady, steady * size)
    ((caller_remote, caller_local),) = entries
    assert caller_remote == ("203.0.113.2", CALLER[1]) and caller_local[0] == RELAY_IP  # the NAT's public address was learnt

    (stream,) = kernel_record["streams"]
    assert kernel_record["timed_out"] is True and kernel_record["dialog_id"] == "7:8"
    assert stream["status"] == "conntrack timeout" and stream["timeout_wait"] == IDLE_TIMEOUT
    assert (stream["caller_packets"], stream["callee_packets"]) == (PACKETS + 1, PACKETS)
    assert (stream["caller_bytes"], stream["callee_bytes"]) == ((PACKETS + 1) * size, PACKETS * size)
    assert (stream["caller_codec"], stream["callee_codec"]) == ("G711u", "G711a")

    userspace_record, userspace_entries, userspace_log = run_call(tmp_path / "userspace", topology, "userspace")
    assert userspace_entries == {} and "Forwarding media in userspace" in userspace_log
    assert comparable(userspace_record) == comparable(kernel_record)


def test_relay_removes_stale_entries_and_its_own_at_stop(tmp_path, topology):
    """Entries with our mark left by a crashed relay go at start-up; a stopping relay removes its own."""
    namespace = topology.name("relay")
    from mediaproxy.relay.plane.conntrack import Flow

    stale = Flow(("203.0.113.9", 4000), (RELAY_IP, 40090), ("198.51.100.9", 4002), (RELAY_IP, 40092))
    in_namespace(namespace, lambda: Conntrack(MARK).create(stale, 600))
    assert len(in_namespace(namespace, lambda: Conntrack(MARK).snapshot())) == 1
    programs = Deployment(tmp_path, f"[Relay]\nrelay_ip = {RELAY_IP}\nforwarding = kernel\n", namespace=namespace)
    try:
        programs.start()
        programs.relay.wait_for_log("Removed 1 stale conntrack entries")
        assert in_namespace(namespace, lambda: Conntrack(MARK).snapshot()) == {}
    finally:
        programs.kill()


def test_forwarding_kernel_refuses_to_start_without_the_kernel_path(tmp_path, topology):
    """fix_kernel_settings = no on a namespace without our nftables table: exit 1 saying what is missing."""
    network = Topology()
    try:
        namespace = network.add("bare")
        network.run("bare", "ip addr add 192.0.2.1/32 dev lo")
        programs = Deployment(
            tmp_path, "[Relay]\nrelay_ip = 192.0.2.1\nforwarding = kernel\nfix_kernel_settings = no\n", namespace=namespace
        )
        programs.start_dispatcher()
        relay = programs._program("media-relay", "relay.log")
        assert relay.process.wait(timeout=30) == 1
        assert "Kernel forwarding is not available: net.ipv4.ip_forward must be 1" in relay.output()
        programs.kill()
    finally:
        network.remove()


CALLS = 50


@pytest.mark.parametrize("forwarding", ["kernel", "userspace"])
def test_calls_survive_the_relay_killed_or_stopped_and_started_again(tmp_path, topology, forwarding):
    """Kernel-forwarded media flows on while the relay process is gone; the restarted relay takes its
    sessions back (ports, latches, kernel entries) and every record counts the whole call.
    Userspace-forwarded media stops only while no relay runs, and the restarted relay forwards it
    at once: nothing is learnt again."""
    namespace = topology.name("relay")
    programs, database = deployment(tmp_path, namespace, forwarding, "40000:40400")
    parties = [
        (udp_socket(topology.name("caller"), (CALLER[0], 5100 + n)), udp_socket(topology.name("callee"), (CALLEE[0], 7100 + n)))
        for n in range(CALLS)
    ]
    facing = []
    sent = relayed_since_kill = 0
    try:
        programs.start()
        proxy = programs.proxy()
        for number, (caller, callee) in enumerate(parties):
            call_id = f"survivor-{number}@example.com"
            caller_media = f"audio:{CALLER[0]}:{5100 + number}:sendrecv:ice=no"
            callee_media = f"audio:{CALLEE[0]}:{7100 + number}:sendrecv:ice=no"
            offer = proxy.request(update(call_id, "ft", media=caller_media, dialog_id=f"1:{number}", signaling_ip=NAT_PUBLIC_IP))
            answer = proxy.request(
                update(call_id, "ft", "tt", kind="reply", media=callee_media, dialog_id=f"1:{number}", signaling_ip=NAT_CALLEE_IP)
            )
            to_caller_side, to_callee_side = (RELAY_IP, int(answer.split()[1])), (RELAY_IP, int(offer.split()[1]))
            facing.append((to_caller_side, to_callee_side))
            callee.sendto(rtp(0, 8), to_callee_side)
            caller.sendto(rtp(0, 0), to_caller_side)
            assert callee.recvfrom(2048)[0] == rtp(0, 0)

        def exchange(rounds, relayed=True):
            nonlocal sent, relayed_since_kill
            for _ in range(rounds):
                sent += 1
                relayed_since_kill += relayed
                for (caller, callee), (to_caller_side, to_callee_side) in zip(parties, facing):
                    caller.sendto(rtp(sent, 0), to_caller_side)
                    if relayed:  # no gap: every packet arrives, in order
                        assert callee.recvfrom(2048) == (rtp(sent, 0), to_callee_side)
                    callee.sendto(rtp(sent, 8), to_callee_side)
                    if relayed:
                        assert caller.recvfrom(2048) == (rtp(sent, 8), to_caller_side)

        exchange(WARM_UP)
        if forwarding == "kernel":
            wait_until(lambda: len(in_namespace(namespace, lambda: Conntrack(MARK).snapshot())) == CALLS, "every call in the kernel")
        for stop in ("kill", "SIGTERM"):
            if stop == "kill":
                programs.relay.process.kill()
                programs.relay.process.wait()
                relayed_since_kill = 0
            else:
                code, _ = programs.relay.stop(timeout=10)
                assert code == 0 and f"Keeping {CALLS} sessions for the next start" in programs.relay.output()
            # no relay process at all: the kernel forwards every packet; userspace media waits
            exchange(5, relayed=forwarding == "kernel")
            programs.start_relay()
            programs.relay.wait_for_log(f"Took back {CALLS} sessions")
            wait_until(lambda: len(json.loads(programs.management(b"sessions"))) == CALLS, "the calls listed again", timeout=5)
            exchange(5)
        assert "Removed" not in programs.relay.output()  # no entry of ours was flushed
        for number in range(CALLS):
            assert proxy.request(remove(f"survivor-{number}@example.com", "ft", "tt")) == "removed"
        wait_until(lambda: len(_rows(database)) == CALLS, "every record")
        for record in _rows(database):
            (stream,) = record["streams"]
            assert record["end_reason"] == "bye" and record["timed_out"] is False
            counted = stream["caller_packets"], stream["callee_packets"]
            if forwarding == "kernel":
                # the first packet each way, then every exchange (the callee's first had nowhere to go)
                assert counted == (1 + sent, sent), record["call_id"]
            else:
                # a kill loses the counting since the session was last kept (at most a minute's);
                # a clean stop loses none
                assert relayed_since_kill <= counted[1] <= counted[0] <= 1 + sent, (record["call_id"], counted)
    finally:
        programs.kill()
        for caller, callee in parties:
            caller.close()
            callee.close()
        in_namespace(namespace, lambda: Conntrack(MARK).flush_ours())

"""Userspace forwarding workers: the worker's loop on real loopback sockets, in process (forwarding,
counting, strays, idleness, garbage on its control socket), and the relay with worker processes
relaying a call, across a worker killed mid-call."""

import os
import select
import signal
import socket
import time

from deployment import Deployment, call, establish, exchange, stream_of, udp_endpoint, wait_until

from harness import loopback_socket
from mediaproxy.relay.plane import worker as worker_module
from mediaproxy.relay.plane.worker import ADD, COUNTERS, SLOT, STRAY, STRAY_HEAD, Worker


def arrived(endpoint):
    """Wait until a datagram is there to read (loopback delivers at once; this says when)."""
    assert select.select([endpoint], [], [], 2)[0], "nothing arrived"


def test_worker_forwards_counts_passes_strays_on_and_reports_idleness():
    relay_caller_side, relay_callee_side = loopback_socket(), loopback_socket()
    for endpoint in (relay_caller_side, relay_callee_side):
        endpoint.setblocking(False)
    caller, callee, stranger = loopback_socket(), loopback_socket(), loopback_socket()
    main, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    main.settimeout(2)
    counters = memoryview(bytearray(8 * COUNTERS * 8)).cast("Q")
    worker = Worker(theirs, counters)
    fds = [os.dup(relay_caller_side.fileno()), os.dup(relay_callee_side.fileno())]
    caller_ip, caller_port = caller.getsockname()
    callee_ip, callee_port = callee.getsockname()
    socket.send_fds(
        main, [ADD.pack(b"A", 3, 7, socket.inet_aton(caller_ip), caller_port, socket.inet_aton(callee_ip), callee_port, 5)], fds
    )
    for fd in fds:
        os.close(fd)
    assert worker.read_control()
    from_caller, from_callee, timeout, token = worker.slots[3]
    assert (timeout, token) == (5, 7)
    for number in range(3):
        caller.sendto(b"\x80\x00" + bytes([number]) * 170, relay_caller_side.getsockname())
    arrived(relay_caller_side)
    worker.forward(from_caller)
    assert [callee.recvfrom(2048)[1] for _ in range(3)] == [relay_callee_side.getsockname()] * 3
    callee.sendto(b"\x80\x08" + bytes(170), relay_callee_side.getsockname())
    arrived(relay_callee_side)
    worker.forward(from_callee)
    assert caller.recvfrom(2048)[1] == relay_caller_side.getsockname()
    assert list(counters[3 * COUNTERS : 4 * COUNTERS]) == [3, 3 * (172 + 28), 1, 172 + 28]
    # a packet from anyone else is not forwarded: it goes to the main process, which judges latches
    stranger.sendto(b"stray", relay_caller_side.getsockname())
    arrived(relay_caller_side)
    worker.forward(from_caller)
    message = main.recv(65536)
    _, slot, token, side, ip, port = STRAY.unpack_from(message)
    assert (slot, token, side, socket.inet_ntoa(ip), port) == (3, 7, 0, "127.0.0.1", stranger.getsockname()[1])
    assert message[STRAY.size :] == b"stray"
    assert list(counters[3 * COUNTERS : 4 * COUNTERS])[0] == 3
    # garbage on the control socket: closed descriptors, nothing else
    spare = os.dup(relay_caller_side.fileno())
    socket.send_fds(main, [b"Zgarbage"], [spare])
    main.send(b"A short")
    assert worker.read_control() and worker.read_control()
    os.close(spare)
    # idle for its timeout: forgotten and reported
    worker.check_idle(time.monotonic() + 5)
    assert SLOT.unpack(main.recv(64)) == (b"G", 3, 7) and worker.slots == {}
    # the relay's own sockets are still open (the worker closed its copies only)
    caller.sendto(b"still there", relay_caller_side.getsockname())
    arrived(relay_caller_side)
    assert relay_caller_side.recvfrom(64)[0] == b"still there"
    main.close()
    assert not worker.read_control()  # the main process is gone: the worker ends
    for endpoint in (relay_caller_side, relay_callee_side, caller, callee, stranger, theirs):
        endpoint.close()


def test_strays_are_bounded_per_second():
    main, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = Worker(theirs, memoryview(bytearray(64)).cast("Q"))
    worker.strays_left = 2
    direction = worker_module.Direction(None, ("127.0.0.1", 1), None, ("127.0.0.1", 2), 0, STRAY_HEAD.pack(b"S", 0, 1, 0))
    for _ in range(5):
        worker.pass_on(direction, ("127.0.0.1", 9), b"x")
    main.setblocking(False)
    received = []
    while True:
        try:
            received.append(main.recv(100))
        except BlockingIOError:
            break
    assert len(received) == 2
    main.close()
    theirs.close()


def children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as stream:
            found += [int(child) for child in stream.read().split()]
    return found


def test_a_relay_with_workers_relays_a_call_across_a_worker_killed_mid_call(tmp_path):
    programs = Deployment(tmp_path, "[Relay]\nuserspace_workers = 2\n", stream_timeout=30).start()
    caller, callee = udp_endpoint(), udp_endpoint()
    try:
        programs.relay.wait_for_log("Userspace forwarding in 2 worker processes")
        workers = children(programs.relay.process.pid)
        assert len(workers) == 2
        proxy = programs.proxy()
        caller_facing, callee_facing = call(proxy, "worked", caller, callee)
        establish(caller, callee, caller_facing, callee_facing)
        programs.relay.wait_for_log("rtp of audio stream of worked (")  # learning → userspace, then → userspace worker
        programs.relay.wait_for_log("→ userspace worker")
        exchange(caller, callee, caller_facing, callee_facing, 50)
        stream = stream_of(programs.management_port, "worked")
        assert stream["path"] == "userspace"
        assert stream["caller_packets"] >= 50 and stream["callee_packets"] >= 50
        before = stream["caller_packets"] + stream["callee_packets"]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        programs.relay.wait_for_log("starting it again with its")
        wait_until(lambda: len(children(programs.relay.process.pid)) == 2, "two workers again")
        exchange(caller, callee, caller_facing, callee_facing, 50)  # each packet arrives before the next is sent
        after = stream_of(programs.management_port, "worked")
        assert after["caller_packets"] + after["callee_packets"] >= before + 100
        assert after["path"] == "userspace"
    finally:
        programs.kill()
        caller.close()
        callee.close()

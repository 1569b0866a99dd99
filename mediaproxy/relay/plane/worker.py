"""A userspace forwarding worker: a process of its own that relays the substreams handed to it.

The relay's main process keeps the sessions and learns the parties; once both sides of a
substream are known it passes the two sockets here (``SCM_RIGHTS`` over a ``SOCK_SEQPACKET``
pair) with the two addresses, and stops reading them. From then on this process forwards what
comes from the learnt address of one side out of the other side's socket, counts packets and IP
bytes into a shared memory slot the main process reads when it wants, drops what comes from
anywhere else (as the kernel path leaves it to a socket nobody forwards from), and says when a
substream went ``timeout`` seconds without a packet. Several workers spread userspace
forwarding over the machine's cores.

Standard library only, no reactor: one epoll loop. Messages (little-endian):

- main → worker ``A`` slot:u32 token:u32 caller_ip:4s caller_port:u16 callee_ip:4s
  callee_port:u16 timeout:u32, with the caller-facing and callee-facing sockets; ``R`` slot:u32
  token:u32 (forget it).
- worker → main ``G`` slot:u32 token:u32: gone idle (the worker forgot it). The token tells the
  main process which hand-over of the slot this was.
- worker → main ``S`` slot:u32 token:u32 side:u8 source_ip:4s source_port:u16, then the
  datagram: a packet from an address that is not the learnt one, for the main process to judge
  (a party that takes its latch back from a source that won it first); at most
  ``STRAYS_PER_SECOND``, and none while the control socket is full.

Run as ``python -m mediaproxy.relay.plane.worker CONTROL_FD MEMORY_FD SLOTS``.
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import socket
import struct
import sys
import time

ADD = struct.Struct("<cII4sH4sHI")
SLOT = struct.Struct("<cII")
STRAY_HEAD = struct.Struct("<cIIB")  # kind, slot, token, side: the same for every stray of a direction
STRAY = struct.Struct("<cIIB4sH")  # the head, then the source's address and port
STRAYS_PER_SECOND = 2000
COUNTERS = 4  # per slot: caller packets, caller bytes, callee packets, callee bytes (u64 each)
SLOT_BYTES = COUNTERS * 8
UDP_IP_OVERHEAD = 28  # counted in IP bytes, as the kernel path counts
READS_PER_WAKEUP = 64
MAX_DATAGRAM = 65535
IDLE_CHECK = 1.0


class Direction:
    """Packets in on one socket from one address, out of the other socket to the other address."""

    __slots__ = ("inbound", "source", "outbound", "destination", "counter", "last", "stray")

    def __init__(
        self, inbound: socket.socket, source: tuple, outbound: socket.socket, destination: tuple, counter: int, stray: bytes
    ) -> None:
        self.inbound, self.source, self.outbound, self.destination = inbound, source, outbound, destination
        self.counter = counter  # index of its packets in the shared counters; bytes follow
        self.last = time.monotonic()
        self.stray = stray  # the start of a stray message for this direction: kind, slot, token, side


class Worker:
    def __init__(self, control: socket.socket, counters: memoryview) -> None:
        self.control = control
        self.counters = counters
        self.poller = select.epoll()
        self.poller.register(control.fileno(), select.EPOLLIN)
        self.slots: dict[int, tuple[Direction, Direction, int, int]] = {}  # slot → directions, timeout, token
        self.by_fd: dict[int, Direction] = {}
        self.strays_left = STRAYS_PER_SECOND

    def run(self) -> None:
        next_check = time.monotonic() + IDLE_CHECK
        control_fd = self.control.fileno()
        while True:
            for fd, _ in self.poller.poll(IDLE_CHECK):
                if fd == control_fd:
                    if not self.read_control():
                        return
                    continue
                direction = self.by_fd.get(fd)
                if direction is not None:
                    self.forward(direction)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + IDLE_CHECK
                self.strays_left = STRAYS_PER_SECOND
                self.check_idle(now)

    def forward(self, direction: Direction) -> None:
        recvfrom, sendto = direction.inbound.recvfrom, direction.outbound.sendto
        source, destination = direction.source, direction.destination
        packets = octets = 0
        for _ in range(READS_PER_WAKEUP):
            try:
                data, sender = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                continue  # an ICMP error reported instead of the next datagram (a fixed socket's)
            except OSError:
                break
            if sender != source:
                self.pass_on(direction, sender, data)
                continue
            try:
                sendto(data, destination)
            except ConnectionRefusedError:
                # the main process fixed the socket to its party (connected): an ICMP error for an
                # earlier packet is reported at this send, which it then did not send
                try:
                    sendto(data, destination)
                except OSError:
                    pass
            except OSError:
                pass  # a full buffer loses this one packet, as UDP would
            packets += 1
            octets += len(data) + UDP_IP_OVERHEAD
        if packets:
            counters, index = self.counters, direction.counter
            counters[index] += packets
            counters[index + 1] += octets
            direction.last = time.monotonic()

    def pass_on(self, direction: Direction, sender: tuple, data: bytes) -> None:
        """A packet from elsewhere goes to the main process, which decides about latches."""
        if self.strays_left <= 0:
            return
        self.strays_left -= 1
        try:
            header = direction.stray + socket.inet_aton(sender[0]) + sender[1].to_bytes(2, "little")
            self.control.send(header + data, socket.MSG_DONTWAIT)
        except OSError:
            pass  # the main process is behind: this one is dropped

    def read_control(self) -> bool:
        """One message from the main process; False once it is gone."""
        try:
            message, fds, _, _ = socket.recv_fds(self.control, 64, 2)
        except InterruptedError:
            return True
        if not message:
            return False
        kind = message[:1]
        if kind == b"A" and len(message) == ADD.size and len(fds) == 2:
            _, slot, token, caller_ip, caller_port, callee_ip, callee_port, timeout = ADD.unpack(message)
            caller, callee = (socket.inet_ntoa(caller_ip), caller_port), (socket.inet_ntoa(callee_ip), callee_port)
            self.add(slot, token, fds, caller, callee, timeout)
        elif kind == b"R" and len(message) == SLOT.size:
            self.remove(SLOT.unpack(message)[1])
            for fd in fds:
                os.close(fd)
        else:
            for fd in fds:
                os.close(fd)
        return True

    def add(self, slot: int, token: int, fds: list[int], caller: tuple, callee: tuple, timeout: int) -> None:
        self.remove(slot)
        caller_side, callee_side = (socket.socket(fileno=fd) for fd in fds)
        base = slot * COUNTERS
        from_caller = Direction(caller_side, caller, callee_side, callee, base, STRAY_HEAD.pack(b"S", slot, token, 0))
        from_callee = Direction(callee_side, callee, caller_side, caller, base + 2, STRAY_HEAD.pack(b"S", slot, token, 1))
        self.slots[slot] = (from_caller, from_callee, timeout, token)
        for direction in (from_caller, from_callee):
            self.by_fd[direction.inbound.fileno()] = direction
            self.poller.register(direction.inbound.fileno(), select.EPOLLIN)

    def remove(self, slot: int) -> None:
        entry = self.slots.pop(slot, None)
        if entry is None:
            return
        for direction in entry[:2]:
            fd = direction.inbound.fileno()
            self.by_fd.pop(fd, None)
            try:
                self.poller.unregister(fd)
            except OSError:
                pass
            direction.inbound.close()  # our copy; the main process keeps its own

    def check_idle(self, now: float) -> None:
        for slot, (from_caller, from_callee, timeout, token) in list(self.slots.items()):
            if now - max(from_caller.last, from_callee.last) >= timeout:
                self.remove(slot)
                try:
                    self.control.send(SLOT.pack(b"G", slot, token))
                except OSError:
                    return


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process ends us by closing the control socket
    control_fd, memory_fd, slots = (int(value) for value in argv[1:4])
    control = socket.socket(fileno=control_fd)
    memory = mmap.mmap(memory_fd, slots * SLOT_BYTES)
    Worker(control, memoryview(memory).cast("Q")).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

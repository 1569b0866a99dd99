"""Userspace forwarding on every core: substreams handed to worker processes once both sides are learnt.

The forwarder interface the kernel path has, for ``forwarding = userspace`` with
``userspace_workers``: the session manager offloads a substream whose two parties are known; its
two sockets go to one of the workers (``plane/worker.py``), which forwards and counts from then
on while this process stops reading them. Counters live in shared memory, one slot per
substream, so ``counters()`` reads them at once. A worker that reports a substream idle gives
the sockets back (``on_gone``, as a kernel entry that timed out). A worker that dies is started
again and given its substreams anew; the sockets never left this process, so no call notices
more than the packets of the moment.

The owner offloaded is the substream: this forwarder takes the sockets from its sides (the
kernel path needs only the addresses).
"""

from __future__ import annotations

import collections
import mmap
import os
import socket
import subprocess
import sys
from itertools import count

from twisted.internet import abstract
from zope.interface import implementer

from mediaproxy.relay.plane.interfaces import IForwarder
from mediaproxy.relay.plane.worker import ADD, COUNTERS, SLOT, SLOT_BYTES, STRAY
from mediaproxy.runtime.log import Logger

log = Logger(namespace="relay.workers")

RESTARTS_PER_MINUTE = 5
RETIRED = 4096  # a worker dying more often than this is left dead: its substreams go back


class WorkerLink(abstract.FileDescriptor):
    """One worker process and the control socket to it, read in the reactor."""

    def __init__(self, reactor, forwarder: WorkerForwarder, number: int) -> None:
        super().__init__(reactor)
        self.forwarder = forwarder
        self.number = number
        self.owners: set = set()
        self.socket: socket.socket | None = None
        self.process: subprocess.Popen | None = None
        self.starts: collections.deque[float] = collections.deque(maxlen=RESTARTS_PER_MINUTE)

    def spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        memory = self.forwarder.memory_fd
        command = [sys.executable, "-m", "mediaproxy.relay.plane.worker", str(theirs.fileno()), str(memory), str(self.forwarder.slots)]
        try:
            self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(), memory), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        ours.setblocking(False)
        self.socket = ours
        self.starts.append(self.reactor.seconds())
        self.reactor.addReader(self)

    def fileno(self) -> int:
        return self.socket.fileno() if self.socket is not None else -1

    def send(self, message: bytes, fds: tuple[int, ...] = ()) -> bool:
        if self.socket is None:
            return False
        try:
            if fds:
                socket.send_fds(self.socket, [message], list(fds))
            else:
                self.socket.send(message)
        except OSError as error:
            log.warn("Userspace worker {number}: cannot hand it a substream: {error}", number=self.number, error=error)
            return False
        return True

    def doRead(self) -> None:  # noqa: N802
        for _ in range(256):
            try:
                message = self.socket.recv(STRAY.size + 65536)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                self.forwarder.worker_died(self)
                return
            kind = message[:1]
            if kind == b"G" and len(message) == SLOT.size:
                self.forwarder.slot_gone(*SLOT.unpack(message)[1:])
            elif kind == b"S" and len(message) >= STRAY.size:
                _, slot, token, side, ip, port = STRAY.unpack_from(message)
                self.forwarder.stray(slot, token, side, (socket.inet_ntoa(ip), port), message[STRAY.size :])

    def close(self, wait: bool = True) -> None:
        if self.socket is not None:
            self.reactor.removeReader(self)
            self.socket.close()  # the worker ends when its control socket does
            self.socket = None
        if self.process is not None:
            if wait:
                try:
                    self.process.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.close(wait=False)


class Handover:
    __slots__ = ("slot", "token", "link", "endpoints", "message", "baseline")

    def __init__(self, slot: int, token: int, link: WorkerLink, endpoints: tuple, message: bytes) -> None:
        self.slot, self.token, self.link, self.endpoints, self.message = slot, token, link, endpoints, message
        self.baseline = (0, 0, 0, 0)  # what was already handed over by checkpoint()


@implementer(IForwarder)
class WorkerForwarder:
    name = "userspace"  # what the operator sees: the packets are forwarded in userspace, on other cores
    keeps_entries = False  # the workers end with the relay: nothing forwards while it is away

    def __init__(self, reactor, workers: int, slots: int, idle_timeout: int) -> None:
        self.reactor = reactor
        self.slots = slots
        self.idle_timeout = idle_timeout
        self.memory_fd = os.memfd_create("mediaproxy-counters")  # close-on-exec: only the workers get it (pass_fds)
        os.ftruncate(self.memory_fd, slots * SLOT_BYTES)
        self.memory = mmap.mmap(self.memory_fd, slots * SLOT_BYTES)
        self.counts = memoryview(self.memory).cast("Q")
        self.free: collections.deque[int] = collections.deque(
            range(slots)
        )  # oldest freed first: no slot is reused while a worker may still count into it
        self.tokens = count(1)
        self.links = [WorkerLink(reactor, self, number) for number in range(workers)]
        self.handovers: dict[object, Handover] = {}
        self.by_slot: dict[int, object] = {}
        # hand-overs taken back lately: a worker may still pass on packets it read for them before
        # it heard, and those belong to the sockets all the same (a party taking its latch back)
        self.retired: collections.OrderedDict[tuple[int, int], tuple] = collections.OrderedDict()
        self.on_gone = lambda owner, counts, timeout_wait: None

    def start(self, keep: frozenset = frozenset()) -> None:
        for link in self.links:
            link.spawn()

    def stop(self, keep_entries: bool = False) -> None:
        for owner in list(self.handovers):
            self.remove(owner)
        for link in self.links:
            link.close()
        self.counts.release()
        self.memory.close()
        os.close(self.memory_fd)

    def adopt(self, owner: object, flow: object) -> bool:
        return False  # workers start afresh with the relay: a kept substream is learnt again

    def offload(self, owner: object, flow: object) -> bool:
        endpoints = (owner.caller.endpoint, owner.callee.endpoint)
        live = [link for link in self.links if link.socket is not None]
        if not self.free or not live or any(endpoint is None or endpoint.fileno() < 0 for endpoint in endpoints):
            return False
        link = min(live, key=lambda candidate: len(candidate.owners))
        slot, token = self.free.popleft(), next(self.tokens) & 0xFFFFFFFF
        base = slot * COUNTERS
        self.counts[base : base + COUNTERS] = memoryview(bytes(SLOT_BYTES)).cast("Q")
        (caller_ip, caller_port), (callee_ip, callee_port) = flow.caller_remote, flow.callee_remote
        message = ADD.pack(
            b"A", slot, token, socket.inet_aton(caller_ip), caller_port, socket.inet_aton(callee_ip), callee_port, self.idle_timeout
        )
        if not link.send(message, tuple(endpoint.fileno() for endpoint in endpoints)):
            self.free.append(slot)
            return False
        for endpoint in endpoints:
            endpoint.pause()
        self.handovers[owner] = Handover(slot, token, link, endpoints, message)
        self.by_slot[slot] = owner
        link.owners.add(owner)
        return True

    def remove(self, owner: object) -> tuple | None:
        handover = self.handovers.pop(owner, None)
        if handover is None:
            return None
        handover.link.send(SLOT.pack(b"R", handover.slot, handover.token))
        return self._release(owner, handover)

    def _release(self, owner: object, handover: Handover) -> tuple:
        self.retired[(handover.slot, handover.token)] = handover.endpoints
        if len(self.retired) > RETIRED:
            self.retired.popitem(last=False)
        final = self._since_checkpoint(handover)
        self.by_slot.pop(handover.slot, None)
        handover.link.owners.discard(owner)
        self.free.append(handover.slot)
        for endpoint in handover.endpoints:
            endpoint.resume()
        return final

    def counters(self, owner: object) -> tuple | None:
        handover = self.handovers.get(owner)
        return None if handover is None else self._since_checkpoint(handover)

    def checkpoint(self, owner: object) -> tuple | None:
        """What ``owner``'s worker counted since the last checkpoint, now the owner's to keep (so
        that a relay killed loses at most what was counted since)."""
        handover = self.handovers.get(owner)
        if handover is None:
            return None
        moved = self._since_checkpoint(handover)
        handover.baseline = tuple(self.counts[handover.slot * COUNTERS : (handover.slot + 1) * COUNTERS])
        return moved

    def _since_checkpoint(self, handover: Handover) -> tuple:
        base = handover.slot * COUNTERS
        return tuple(now - before for now, before in zip(self.counts[base : base + COUNTERS], handover.baseline))

    # -- what the workers say

    def slot_gone(self, slot: int, token: int) -> None:
        owner = self.by_slot.get(slot)
        handover = self.handovers.get(owner) if owner is not None else None
        if handover is None or handover.token != token:
            return  # removed meanwhile
        del self.handovers[owner]
        self.on_gone(owner, self._release(owner, handover), self.idle_timeout)

    def stray(self, slot: int, token: int, side: int, source: tuple, data: bytes) -> None:
        """A packet a worker got from elsewhere than the learnt address: as if this process read it."""
        handover = self.handovers.get(self.by_slot.get(slot))
        endpoints = handover.endpoints if handover is not None and handover.token == token else self.retired.get((slot, token))
        if endpoints is None or side not in (0, 1) or endpoints[side].fileno() < 0:
            return
        endpoints[side].deliver(data, source)

    def worker_died(self, link: WorkerLink) -> None:
        code = link.process.poll() if link.process is not None else None
        link.close(wait=False)
        owners = [owner for owner in list(link.owners) if owner in self.handovers]
        if len(link.starts) == RESTARTS_PER_MINUTE and self.reactor.seconds() - link.starts[0] < 60:
            log.critical(
                "Userspace worker {number} keeps dying (exit status {code}); its {count} substreams go back to the main process",
                number=link.number,
                code=code,
                count=len(owners),
            )
            for owner in owners:
                self.on_gone(owner, self._release(owner, self.handovers.pop(owner)), 0)
            return
        log.error(
            "Userspace worker {number} ended (exit status {code}); starting it again with its {count} substreams",
            number=link.number,
            code=code,
            count=len(owners),
        )
        link.spawn()
        for owner in owners:
            handover = self.handovers[owner]
            if not link.send(handover.message, tuple(endpoint.fileno() for endpoint in handover.endpoints)):
                self.on_gone(owner, self._release(owner, self.handovers.pop(owner)), 0)

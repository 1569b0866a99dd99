"""The kernel forwarding backend: substreams handed to conntrack once both parties are learnt.

Counters are read live from the entries (one dump per reactor turn however many streams ask)
and folded into the substream's totals when an entry goes away. The kernel tells us an entry
timed out with a DESTROY event, read in the reactor; that runs the same expiry path as the
userspace timers, as ``conntrack timeout``.
"""

from __future__ import annotations

from twisted.internet import abstract
from twisted.logger import Logger

from mediaproxy.relay.forwarding.conntrack import Conntrack, ConntrackError, Counters, Flow, destroy_socket, destroyed
from mediaproxy.relay.media import CALLER, Substream

log = Logger(namespace="relay.kernel")


class DestroyReader(abstract.FileDescriptor):
    """Reads conntrack DESTROY events from netlink in the reactor."""

    def __init__(self, reactor, forwarder: KernelForwarder) -> None:  # noqa: ANN001
        super().__init__(reactor)
        self.forwarder = forwarder
        self.socket = destroy_socket()

    def fileno(self) -> int:
        return self.socket.fileno() if self.socket is not None else -1

    def doRead(self) -> None:  # noqa: N802
        for _ in range(64):  # bounded so a storm of events cannot starve everything else
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return
            except OSError as error:
                # ENOBUFS: the socket overflowed and events were lost
                log.warn("Lost conntrack events ({error}); checking which entries are gone", error=error)
                self.forwarder.reconcile()
                return
            for key, counters in destroyed(data, self.forwarder.conntrack.mark):
                self.forwarder.entry_destroyed(key, counters)

    def connectionLost(self, reason) -> None:  # noqa: N802, ANN001
        if self.socket is not None:
            self.socket.close()
            self.socket = None


class KernelForwarder:
    name = "kernel"

    def __init__(self, reactor, conntrack: Conntrack, idle_timeout: int) -> None:  # noqa: ANN001
        self.reactor = reactor
        self.conntrack = conntrack
        self.idle_timeout = idle_timeout
        self.substreams: dict[tuple, Substream] = {}
        self._snapshot: dict | None = None
        self.reader: DestroyReader | None = None
        self.failures = 0
        self.kept: set[tuple] = set()  # entries kept at start for the sessions of the last run

    def start(self, keep: frozenset = frozenset()) -> None:
        """Delete the entries with our mark that no kept session had; those kept wait in ``kept`` for :meth:`adopt`."""
        present, stale = self.conntrack.flush_ours(keep)
        if stale:
            log.info("Removed {count} stale conntrack entries left by an earlier run", count=stale)
        if present:
            log.info("Kept {count} conntrack entries of the sessions kept from the last run", count=len(present))
        self.reader = DestroyReader(self.reactor, self)
        self.reactor.addReader(self.reader)
        self.kept = present

    def stop(self, keep_entries: bool = False) -> None:
        """Stop; the entries stay in the kernel (forwarding on) when the sessions are kept for the next start."""
        for substream in list(self.substreams.values()):
            if keep_entries:
                substream.kernel = None
            else:
                self.remove(substream)
        self.substreams.clear()
        if self.reader is not None:
            self.reactor.removeReader(self.reader)
            self.reader.connectionLost(None)
            self.reader = None
        self.conntrack.close()

    # -- the forwarder interface used by the media streams

    def adopt(self, substream: Substream) -> bool:
        """Take back the entry a kept session's substream had, when the kernel still has it."""
        flow = _flow(substream)
        if flow.key not in self.kept:
            return False
        substream.kernel = flow
        self.substreams[flow.key] = substream
        return True

    def offload(self, substream: Substream) -> None:
        flow = _flow(substream)
        try:
            self.conntrack.create(flow, self.idle_timeout)
        except ConntrackError as error:
            self.failures += 1
            log.warn("{kind} of {stream} stays in userspace: {error}", kind=substream.kind, stream=substream.stream, error=error)
            return
        substream.kernel = flow
        self.substreams[flow.key] = substream
        log.debug("{kind} of {stream} forwarded by the kernel", kind=substream.kind, stream=substream.stream)

    def remove(self, substream: Substream) -> None:
        flow = substream.kernel
        if flow is None:
            return
        self.substreams.pop(flow.key, None)
        substream.kernel = None
        try:
            final = self.conntrack.remove(flow)
        except ConntrackError as error:
            log.warn("{error}", error=error)
            final = None
        if final is not None:
            _fold(substream, final)

    def counters(self, substream: Substream, party: str) -> tuple[int, int]:
        flow = substream.kernel
        if flow is None:
            return 0, 0
        counters = self.snapshot().get(flow.key, Counters())
        if party == CALLER:
            return counters.orig_packets, counters.orig_bytes
        return counters.reply_packets, counters.reply_bytes

    def snapshot(self) -> dict:
        if self._snapshot is None:
            try:
                self._snapshot = self.conntrack.snapshot()
            except ConntrackError as error:
                log.warn("{error}", error=error)
                self._snapshot = {}
            # one dump serves every stream asking during this reactor turn
            self.reactor.callLater(0, self._forget_snapshot)
        return self._snapshot

    def _forget_snapshot(self) -> None:
        self._snapshot = None

    # -- kernel events

    def reconcile(self) -> None:
        """After lost DESTROY events: expire the substreams whose entries are gone without our hearing of it."""
        try:
            present = self.conntrack.snapshot()
        except ConntrackError as error:
            log.warn("{error}", error=error)
            return
        missed = [key for key in self.substreams if key not in present]
        if missed:
            log.warn("{count} conntrack entries ended while events were lost; their last counters are lost", count=len(missed))
        for key in missed:
            self.entry_destroyed(key, Counters())

    def entry_destroyed(self, key: tuple, counters: Counters) -> None:
        substream = self.substreams.pop(key, None)
        if substream is None:
            return  # removed by us, or not ours
        substream.kernel = None
        _fold(substream, counters)
        substream.kernel_entry_expired(self.idle_timeout)


def _flow(substream: Substream) -> Flow:
    return Flow(
        caller_remote=substream.caller.remote,
        caller_local=substream.caller.endpoint.local,
        callee_remote=substream.callee.remote,
        callee_local=substream.callee.endpoint.local,
    )


def _fold(substream: Substream, counters: Counters) -> None:
    """Add a gone entry's counters to the substream's totals: orig is the caller's direction, reply the callee's."""
    substream.caller.kernel_packets += counters.orig_packets
    substream.caller.kernel_bytes += counters.orig_bytes
    substream.callee.kernel_packets += counters.reply_packets
    substream.callee.kernel_bytes += counters.reply_bytes

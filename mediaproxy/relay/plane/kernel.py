"""The kernel forwarding backend: substreams handed to conntrack once both parties are learnt.

The forwarder owns its entries and their live counters (one dump per reactor turn however many
streams ask). An entry's last counters go back to whoever removes it; the kernel tells us an
entry timed out by itself with a DESTROY event, read in the reactor and reported to ``on_gone``.
Owners are opaque: this module knows nothing of streams.
"""

from __future__ import annotations

from twisted.internet import abstract
from zope.interface import implementer

from mediaproxy.relay.plane.conntrack import Conntrack, ConntrackError, Counters, Flow, destroy_socket, destroyed
from mediaproxy.relay.plane.interfaces import IForwarder
from mediaproxy.runtime.log import Logger

log = Logger(namespace="relay.kernel")


class DestroyReader(abstract.FileDescriptor):
    """Reads conntrack DESTROY events from netlink in the reactor."""

    def __init__(self, reactor, forwarder: KernelForwarder) -> None:
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

    def connectionLost(self, reason) -> None:  # noqa: N802
        if self.socket is not None:
            self.socket.close()
            self.socket = None


Counts = tuple  # (caller packets, caller bytes, callee packets, callee bytes)


def counts(counters: Counters) -> Counts:
    """An entry's counters as the forwarder interface gives them: orig is the caller's direction."""
    return counters.orig_packets, counters.orig_bytes, counters.reply_packets, counters.reply_bytes


@implementer(IForwarder)
class KernelForwarder:
    name = "kernel"
    keeps_entries = True  # conntrack entries forward on while the relay is away

    def __init__(self, reactor, conntrack: Conntrack, idle_timeout: int) -> None:
        self.reactor = reactor
        self.conntrack = conntrack
        self.idle_timeout = idle_timeout
        self.entries: dict[object, Flow] = {}  # owner → its entry
        self.owners: dict[tuple, object] = {}  # entry key → owner
        self._snapshot: dict | None = None
        self.reader: DestroyReader | None = None
        self.failures = 0
        self.kept: set[tuple] = set()  # entries kept at start for the sessions of the last run
        self.on_gone = lambda owner, counts, timeout_wait: None

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
        if not keep_entries:
            for owner in list(self.entries):
                self.remove(owner)
        self.entries.clear()
        self.owners.clear()
        if self.reader is not None:
            self.reactor.removeReader(self.reader)
            self.reader.connectionLost(None)
            self.reader = None
        self.conntrack.close()

    def _own(self, owner: object, flow: Flow) -> None:
        self.entries[owner] = flow
        self.owners[flow.key] = owner

    def adopt(self, owner: object, flow: Flow) -> bool:
        """Take back the entry a kept session's substream had, when the kernel still has it."""
        if flow.key not in self.kept:
            return False
        self._own(owner, flow)
        return True

    def offload(self, owner: object, flow: Flow) -> bool:
        try:
            self.conntrack.create(flow, self.idle_timeout)
        except ConntrackError as error:
            self.failures += 1
            log.warn("{owner} stays in userspace: {error}", owner=owner, error=error)
            return False
        self._own(owner, flow)
        return True

    def remove(self, owner: object) -> Counts | None:
        flow = self.entries.pop(owner, None)
        if flow is None:
            return None
        self.owners.pop(flow.key, None)
        try:
            final = self.conntrack.remove(flow)
        except ConntrackError as error:
            log.warn("{error}", error=error)
            final = None
        return counts(final) if final is not None else None

    def counters(self, owner: object) -> Counts | None:
        flow = self.entries.get(owner)
        if flow is None:
            return None
        return counts(self.snapshot().get(flow.key, Counters()))

    def checkpoint(self, owner: object) -> None:
        return None  # an entry keeps its own counts, across a relay restart too

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
        """After lost DESTROY events: report the entries that are gone without our hearing of it."""
        try:
            present = self.conntrack.snapshot()
        except ConntrackError as error:
            log.warn("{error}", error=error)
            return
        missed = [key for key in self.owners if key not in present]
        if missed:
            log.warn("{count} conntrack entries ended while events were lost; their last counters are lost", count=len(missed))
        for key in missed:
            self.entry_destroyed(key, Counters())

    def entry_destroyed(self, key: tuple, counters: Counters) -> None:
        owner = self.owners.pop(key, None)
        if owner is None:
            return  # removed by us, or not ours
        del self.entries[owner]
        self.on_gone(owner, counts(counters), self.idle_timeout)

"""Choosing the forwarding path at relay start: ``[Relay] forwarding = auto | kernel | userspace``."""

from __future__ import annotations

import os

from zope.interface import implementer

from mediaproxy.relay.plane import host
from mediaproxy.relay.plane.interfaces import IForwarder
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.process import StartupError

log = Logger(namespace="relay")


@implementer(IForwarder)
class NoKernelForwarding:
    """The forwarder used when the kernel path is off: everything stays in userspace."""

    name = "userspace"
    keeps_entries = False
    on_gone = None

    def start(self, keep: frozenset = frozenset()) -> None:
        pass

    def stop(self, keep_entries: bool = False) -> None:
        pass

    def adopt(self, owner: object, flow: object) -> bool:
        return False

    def offload(self, owner: object, flow: object) -> bool:
        return False

    def remove(self, owner: object) -> None:
        return None

    def counters(self, owner: object) -> None:
        return None

    def checkpoint(self, owner: object) -> None:
        return None


def choose(config, reactor, idle_timeout: int, binder=None, changes: host.HostChanges | None = None, keep: frozenset = frozenset()):
    """The forwarder to use; with ``auto`` a host that cannot do kernel forwarding gets userspace and one warning.

    What was changed on the host to make kernel forwarding work is noted in ``changes``; the
    conntrack entries in ``keep`` (of sessions kept from the last run) are left in place.
    """
    if config.forwarding == "userspace":
        log.info("Forwarding media in userspace ([Relay] forwarding = userspace)")
        return userspace(config, reactor, idle_timeout)
    from mediaproxy.relay.plane.conntrack import Conntrack, ConntrackError  # noqa: PLC0415
    from mediaproxy.relay.plane.kernel import KernelForwarder  # noqa: PLC0415

    try:
        changed = host.prepare(config.fix_kernel_settings, config.conntrack_mark, changes=changes)
        forwarder = KernelForwarder(reactor, Conntrack(config.conntrack_mark), idle_timeout)
        forwarder.start(keep)
    except (host.KernelSetupError, ConntrackError, OSError) as error:
        if config.forwarding == "kernel":
            raise StartupError(f"Kernel forwarding is not available: {error}") from None
        log.warn("Kernel forwarding is not available ({error}); forwarding media in userspace", error=error)
        return userspace(config, reactor, idle_timeout)
    if binder is not None:
        binder.mark = config.conntrack_mark
    if changed:
        log.info("Set up for kernel forwarding: {changed}", changed=", ".join(changed))
    log.info(
        "Forwarding media in the kernel (conntrack NAT entries, mark {mark:#x}, idle timeout {timeout}s)",
        mark=config.conntrack_mark,
        timeout=idle_timeout,
    )
    return forwarder


def userspace(config, reactor, idle_timeout: int):
    """Userspace forwarding: in worker processes (``userspace_workers``; by default one per core
    but one, on a machine with three or more), else in this process alone."""
    workers = config.userspace_workers
    if workers is None:
        # the relay process and the kernel's own packet work need a core; on two cores a worker
        # beside them only competes with them (bench/line_rate.py: no gain on two cores)
        cores = len(os.sched_getaffinity(0))
        workers = cores - 1 if cores >= 3 else 0
    if workers == 0:
        log.info("Userspace forwarding in this process")
        return NoKernelForwarding()
    from mediaproxy.relay.plane.workers import WorkerForwarder  # noqa: PLC0415

    try:
        forwarder = WorkerForwarder(reactor, workers, config.port_range.pairs, idle_timeout)
        forwarder.start()
    except OSError as error:  # no shared memory or no processes allowed (a service's system call filter)
        log.warn("Cannot start userspace workers ({error}); userspace forwarding in this process", error=error)
        return NoKernelForwarding()
    log.info("Userspace forwarding in {count} worker processes once both parties are learnt", count=workers)
    return forwarder

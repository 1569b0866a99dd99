"""The part every accounting plugin shares: spool, worker thread, life cycle, status."""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet import defer
from zope.interface import implementer

from mediaproxy.accounting.delivery import Backend, DeliveryQueue, ThreadRunner
from mediaproxy.accounting.spool import Spool, SpoolError
from mediaproxy.plugin import IAccountingPlugin, PluginBase
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.process import StartupError
from mediaproxy.wire.statistics import SessionRecord

log = Logger(namespace="accounting")

STOP_TIMEOUT = 5.0


def spool_directory(configuration, runtime_dir: str, backend: str) -> str:
    return os.path.join(runtime_dir, configuration.dispatcher.spool_dir, backend)


@implementer(IAccountingPlugin)
class AccountingPlugin(PluginBase):
    """Spools each ended call's record and hands it to its backend in a worker thread."""

    def __init__(self, name: str, backend: Backend, directory: str, reactor, run: Callable[..., defer.Deferred] | None = None) -> None:
        self.name = name
        self.backend = backend
        self.directory = directory
        self.reactor = reactor
        self.run = run
        self.runner: ThreadRunner | None = None
        self.queue: DeliveryQueue | None = None

    def start(self) -> None:
        try:
            spool = Spool(self.directory)
        except SpoolError as error:
            raise StartupError(f"{self.name} accounting: {error}") from None
        if self.run is None:
            self.runner = ThreadRunner(self.reactor, f"accounting-{self.name}")
            self.run = self.runner
        self.queue = DeliveryQueue(self.name, self.backend, spool, self.reactor, self.run)
        prepare = getattr(self.backend, "prepare", None)
        if prepare is not None:
            # e.g. create the table now, in the worker thread, ahead of the first record
            self.run(prepare).addErrback(self._not_prepared)
        self.queue.start()

    def _not_prepared(self, failure) -> None:
        log.warn(
            "{name} accounting is not reachable at start-up ({error}); records wait in the spool",
            name=self.name,
            error=failure.getErrorMessage(),
        )

    def session_ended(self, record: SessionRecord) -> None:
        self.queue.add(record)

    def accounting_status(self) -> dict:
        return self.queue.status()

    @defer.inlineCallbacks
    def stop(self):
        """Wait (a bounded time) for the record in flight, then close the backend in its thread."""
        if self.queue is not None:
            for step in (self.queue.stop, lambda: self.run(self.backend.close)):
                try:
                    yield step().addTimeout(STOP_TIMEOUT, self.reactor)
                except defer.TimeoutError:
                    log.warn(
                        "{name} accounting did not finish within {seconds}s; its record stays spooled", name=self.name, seconds=STOP_TIMEOUT
                    )
                    break
                except Exception:  # noqa: BLE001 - closing a dead connection may fail; nothing to keep
                    log.debug("{name} accounting: closing the backend failed", name=self.name)
        if self.runner is not None:
            self.runner.stop()
            self.runner = None


def plugin_for(name: str, configuration, context, make_backend: Callable[[], Backend]) -> AccountingPlugin | None:
    """The accounting plugin ``name`` when ``[Dispatcher] accounting`` lists it, else None."""
    if name not in configuration.dispatcher.accounting:
        return None
    return AccountingPlugin(name, make_backend(), spool_directory(configuration, context.runtime_dir, name), context.reactor)

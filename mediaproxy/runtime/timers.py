"""Periodic jobs as Twisted services: they start and stop with the service that holds them."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application import service
from twisted.internet import task

from mediaproxy.runtime.log import Logger

log = Logger(namespace="timers")


class Periodic(service.Service):
    """Runs ``job`` every ``interval`` seconds while running: first after one interval, or at
    start with ``now`` (TimerService always runs at once, which a restart's first check must not)."""

    def __init__(self, name: str, interval: float, job: Callable[[], object], clock, now: bool = False) -> None:
        self.name = name
        self.interval = interval
        self.job = job
        self.clock = clock
        self.now = now
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:  # noqa: N802
        service.Service.startService(self)
        self._loop = task.LoopingCall(self.job)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=self.now).addErrback(self._failed)

    def _failed(self, failure) -> None:
        log.failure("The periodic {name} stopped", failure, name=self.name)

    def stopService(self) -> None:  # noqa: N802
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

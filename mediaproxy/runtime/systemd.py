"""The service manager's notification protocol (sd_notify): readiness, status and watchdog.

The protocol is one datagram of ``KEY=value`` lines to the UNIX socket named in
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Without that variable,
as under init.d or in a terminal, every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.timers import Periodic

log = Logger(namespace="process")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_interval = _watchdog_interval(environ)
        self._socket: socket.socket | None = None
        self._status: str | None = None
        self._loop: Periodic | None = None
        self._failed_logged = False

    def send(self, **fields: str) -> None:
        if self.address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message, self.address)
        except OSError as error:
            if not self._failed_logged:
                self._failed_logged = True
                log.warn("Cannot notify the service manager at {address}: {error}", address=self.address, error=error.strerror or error)

    def ready(self, status: str) -> None:
        self._status = status
        self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self.send(STATUS=status)

    def stopping(self, status: str) -> None:
        self.send(STOPPING="1", STATUS=status)

    def start_watchdog(self, reactor, status_of=None) -> None:
        """Feed the watchdog from the reactor (a stuck reactor then gets the service restarted).

        ``status_of`` returns the current STATUS text, sent with each tick when it changed.
        """
        if self.address is None:
            return
        interval = self.watchdog_interval / 2 if self.watchdog_interval else 10.0

        def tick() -> None:
            if self.watchdog_interval:
                self.send(WATCHDOG="1")
            if status_of is not None:
                self.status(status_of())

        self._loop = Periodic("service manager notifications", interval, tick, reactor, now=True)
        self._loop.startService()

    def stop_watchdog(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stopService()
        self._loop = None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between watchdog deadlines, when the watchdog is meant for this process."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        microseconds = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    # systemd's usec_t is 64 bits; anything else is not from systemd (and would overflow a float)
    return microseconds / 1_000_000 if 0 < microseconds < 2**64 else None

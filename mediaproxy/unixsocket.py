"""Ownership and permissions of the UNIX sockets the SIP proxy uses."""

from __future__ import annotations

import grp
import os

from twisted.logger import Logger

from mediaproxy.process import StartupError

log = Logger(namespace="dispatcher")

DEFAULT_GROUP = "mediaproxy"


def group_id(name: str | None) -> int | None:
    """The gid for ``socket_group``; None keeps the process's group.

    The default group missing is normal outside the Debian packages; a group the operator
    named that does not exist is a start-up error.
    """
    if name is None:
        return None
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        if name == DEFAULT_GROUP:
            log.info("There is no group {group}; the proxy sockets keep the dispatcher's own group", group=name)
            return None
        raise StartupError(f"[Dispatcher] socket_group = {name!r}: there is no such group") from None


def restrict(path: str, mode: int, gid: int | None) -> None:
    """Give a freshly bound socket its group and mode (Twisted set the mode already; repeat it after chown)."""
    try:
        # no chown when the group is already right: the unit's system call filter need not allow it
        if gid is not None and os.stat(path).st_gid != gid:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
    except OSError as error:
        raise StartupError(f"cannot give {path} mode {mode:04o} and group {gid}: {error.strerror}") from None

"""Ownership and permissions of the UNIX sockets the SIP proxy uses."""

from __future__ import annotations

import grp
import os

from mediaproxy.configuration import DispatcherConfig
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.process import StartupError

log = Logger(namespace="dispatcher")

DEFAULT_GROUP = DispatcherConfig.socket_group


def group_id(name: str | None) -> int | None:
    """The gid for ``socket_group``; None keeps the process's group.

    The default group missing is normal outside the Debian packages; a group the operator
    named that does not exist is a start-up error.
    """
    if name is None:
        return None
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isascii() and name.isdigit() else grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        if name == DEFAULT_GROUP:
            log.info("There is no group {group}; the proxy sockets keep the dispatcher's own group", group=name)
            return None
        raise StartupError(f"[Dispatcher] socket_group = {name!r}: there is no such group") from None


def give_group(path: str, gid: int | None) -> None:
    """Give a freshly bound socket its group (Twisted's listen set its mode already)."""
    # no chown when the group is already right: the unit's system call filter need not allow it
    if gid is None or os.stat(path).st_gid == gid:
        return
    try:
        os.chown(path, -1, gid)
    except OSError as error:
        raise StartupError(f"cannot give {path} to group {gid}: {error.strerror}") from None

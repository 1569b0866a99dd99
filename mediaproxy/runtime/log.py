"""Log set-up: console with --no-fork, the journal with --systemd, syslog when daemonised; SIGUSR1 toggles DEBUG."""

from __future__ import annotations

import sys
import syslog
import time
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
)
from twisted.logger import Logger as TwistedLogger
from zope.interface import implementer

_LEVELS = {
    "CRITICAL": LogLevel.critical,
    "ERROR": LogLevel.error,
    "WARNING": LogLevel.warn,
    "INFO": LogLevel.info,
    "DEBUG": LogLevel.debug,
}
_NAMES = {LogLevel.critical: "CRITICAL", LogLevel.error: "ERROR", LogLevel.warn: "WARNING", LogLevel.info: "INFO", LogLevel.debug: "DEBUG"}
_RANK = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3, LogLevel.critical: 4}
_threshold = 0  # the rank below which nothing is logged; everything until a LogControl starts
_SYSLOG_PRIORITY = {
    LogLevel.critical: syslog.LOG_CRIT,
    LogLevel.error: syslog.LOG_ERR,
    LogLevel.warn: syslog.LOG_WARNING,
    LogLevel.info: syslog.LOG_INFO,
    LogLevel.debug: syslog.LOG_DEBUG,
}


def format_line(event: dict) -> str:
    level = _NAMES.get(event.get("log_level"), "INFO")
    text = _format(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    return f"{level:<8} {text}"


def _format(event: dict) -> str:
    """The event's text: ``str.format_map`` (C) on its format, which is what our formats need and
    several times cheaper than Twisted's formatter, a per-call line on a busy relay being no rare
    thing; Twisted's formatter for anything it cannot do (no format, a method call in a field)."""
    template = event.get("log_format")
    if isinstance(template, str):
        try:
            return template.format_map(event)
        except Exception:  # noqa: BLE001 - any format problem: Twisted's formatter says it its way
            pass
    return formatEvent(event)


@implementer(ILogObserver)
class ConsoleObserver:
    """Lines on a terminal or, with ``priorities``, for the journal: there each line starts with
    the ``<N>`` priority prefix journald reads (sd-daemon(3)), every line of a multi-line event
    (a traceback) too, so ``journalctl -p err`` shows all of it."""

    def __init__(self, stream: TextIO, priorities: bool = False) -> None:
        self.stream = stream
        self.priorities = priorities

    def __call__(self, event: dict) -> None:
        text = format_line(event)
        if self.priorities:
            priority = _SYSLOG_PRIORITY.get(event.get("log_level"), syslog.LOG_INFO)
            text = "\n".join(f"<{priority}>{line}" for line in text.splitlines())
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


@implementer(ILogObserver)
class SyslogObserver:
    def __init__(self, ident: str) -> None:
        syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)

    def __call__(self, event: dict) -> None:
        priority = _SYSLOG_PRIORITY.get(event.get("log_level"), syslog.LOG_INFO)
        for line in format_line(event).splitlines():
            syslog.syslog(priority, line)


# Twisted's own chatter about ports and factories, which says nothing an operator needs
# ClientService's "Scheduling retry" repeats what the relay's own line about the attempt says
_NOISE = ("Starting factory", "Stopping factory", "Main loop terminated", " starting on ", " Closed)", "Scheduling retry ")


def quiet_twisted(event: dict) -> PredicateResult:
    if event.get("log_level") is LogLevel.info and event.get("log_namespace", "").startswith(("twisted", "log_legacy")):
        text = formatEvent(event)
        if any(marker in text for marker in _NOISE):
            return PredicateResult.no
    return PredicateResult.maybe


class Logger(TwistedLogger):
    """Twisted's Logger, dropping an event below the process's level before it is built: a
    debug line a command would log costs a comparison, not an event through the observers."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:  # Twisted's name
        rank = _RANK.get(level)
        if rank is None or "log_trace" in kwargs:
            super().emit(level, format, **kwargs)  # not a level (Twisted says so its way), or a traced event
        elif rank >= _threshold:
            # the event Twisted's emit builds, without its check of the level (a walk of the level
            # constants at every line, measurable on a relay logging each call)
            kwargs.update(
                log_logger=self,
                log_level=level,
                log_namespace=self.namespace,
                log_source=self.source,
                log_format=format,
                log_time=time.time(),
            )
            self.observer(kwargs)


def at_level(event: dict) -> PredicateResult:
    """Twisted's own loggers' events below the process's level (ours never get this far)."""
    return PredicateResult.no if _RANK.get(event.get("log_level"), 1) < _threshold else PredicateResult.maybe


LEVEL_NAMES = tuple(_LEVELS)
_active: LogControl | None = None  # the process's, once logging started


def level_name(name: str) -> str:
    """A log level's name from any case; ValueError naming the levels for anything else."""
    level = name.upper()
    if level not in _LEVELS:
        raise ValueError(f"{name!r} is not a log level ({', '.join(LEVEL_NAMES)})")
    return level


def set_level(name: str) -> str:
    """Set the process's log level by name (case-insensitive), as the management interface asks;
    ValueError for a name that is not a level. Returns the level's name."""
    level = level_name(name)
    if _active is not None:
        _active.set_level(level)
    return level


class LogControl:
    """Owns the process's level so signals can switch DEBUG on and off. A plain rank compared at
    every event: Twisted's level predicate walks its level constants for each one."""

    def __init__(self, level: str) -> None:
        self.configured = _LEVELS[level]
        self.level = self.configured

    @property
    def debugging(self) -> bool:
        return self.level is LogLevel.debug

    def toggle_debug(self) -> str:
        self._apply(self.configured if self.debugging else LogLevel.debug)
        return _NAMES[self.level]

    def set_level(self, level: str) -> None:
        self.configured = _LEVELS[level]
        self._apply(self.configured)

    def _apply(self, level: LogLevel) -> None:
        self.level = level
        if _active is self:
            global _threshold  # the level is the process's
            _threshold = _RANK[level]

    def start(self, ident: str, to_console: bool, journal: bool = False) -> None:
        global _active  # logging is the process's, and so is its level
        _active = self
        self._apply(self.level)
        observer = ConsoleObserver(sys.stderr, priorities=journal) if to_console or journal else SyslogObserver(ident)
        globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [at_level, quiet_twisted])], redirectStandardIO=False)

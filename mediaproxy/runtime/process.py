"""What both programs share: command line, config loading, daemonising, signals, exit codes."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer

from mediaproxy import __version__, configuration
from mediaproxy.runtime.log import LogControl, Logger
from mediaproxy.runtime.systemd import Notifier

log = Logger(namespace="process")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
# sysexits.h EX_CONFIG: the unit files do not restart on it, as a restart cannot fix config.ini
EXIT_CONFIG = 78


class StartupError(Exception):
    """Start-up cannot go on; the message says why, in the operator's words."""


@dataclass
class Options:
    program: str
    config_dir: str | None
    runtime_dir: str
    pid_file: str | None
    foreground: bool
    systemd: bool
    debug: bool
    flags: frozenset[str] = frozenset()


def parse_arguments(program: str, description: str, argv: list[str] | None, extra: dict[str, str] | None = None) -> Options:
    """The options both programs take; ``extra`` adds program-specific flags (name -> help), found in ``Options.flags``."""
    parser = argparse.ArgumentParser(prog=program, description=description)
    for flag, text in (extra or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument(
        "--config-dir", metavar="PATH", help=f"directory holding config.ini and tls/ (searched before {configuration.SYSTEM_CONFIG_DIR})"
    )
    parser.add_argument(
        "--runtime-dir",
        metavar="PATH",
        default=configuration.DEFAULT_RUNTIME_DIR,
        help="directory for sockets, state and pid files (default: %(default)s)",
    )
    parser.add_argument("--pid", metavar="FILE", help=f"pid file (default when daemonised: <runtime-dir>/{program}.pid)")
    parser.add_argument("--no-fork", action="store_true", help="stay in the foreground and log to the terminal")
    parser.add_argument("--systemd", action="store_true", help="stay in the foreground and log for the journal")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level, overriding log_level")
    parser.add_argument("--version", action="version", version=f"{program} {__version__}")
    args = parser.parse_args(argv)
    foreground = args.no_fork or args.systemd
    pid_file = args.pid or (None if foreground else os.path.join(args.runtime_dir, f"{program}.pid"))
    flags = frozenset(flag for flag in (extra or {}) if getattr(args, flag.lstrip("-").replace("-", "_")))
    return Options(program, args.config_dir, os.path.abspath(args.runtime_dir), pid_file, foreground, args.systemd, args.debug, flags)


def load_configuration(options: Options) -> configuration.Configuration:
    program_dir = os.path.dirname(os.path.realpath(sys.argv[0])) if sys.argv and sys.argv[0] else None
    return configuration.load(configuration.search_path(options.config_dir, program_dir))


def fail(program: str, message: str, status: int = EXIT_STARTUP_FAILED) -> int:
    print(f"{program}: {message}", file=sys.stderr)
    return status


class Program:
    """Runs one service in the reactor with the signal and exit-code conventions of both programs.

    ``build`` returns the root service; ``signals`` maps signal numbers to callables run in the
    reactor thread. Anything raised while building or starting becomes a one-line critical error
    and exit status 1. The root service may have ``ready()`` (a Deferred fired when it is ready
    to be used) and ``status_line()`` (for the service manager's STATUS).
    """

    def __init__(self, options: Options, log_control: LogControl, notifier: Notifier | None = None) -> None:
        self.options = options
        self.log_control = log_control
        self.exit_status = EXIT_OK
        self._ready_pipe: int | None = None
        self.notifier = notifier or Notifier()

    def run(self, build: Callable, signals: Callable) -> int:
        options = self.options
        try:
            os.makedirs(options.runtime_dir, exist_ok=True)
        except OSError as error:
            return fail(options.program, f"cannot create the runtime directory {options.runtime_dir}: {error.strerror}")
        if not options.foreground:
            status = self._daemonize()
            if status is not None:
                return status
        self.log_control.start(options.program, to_console=options.foreground, journal=options.systemd)
        if options.pid_file:
            try:
                _write_pid_file(options.pid_file)
            except OSError as error:
                return self._startup_failed(f"cannot write the pid file {options.pid_file}: {error.strerror}")
        from twisted.internet import reactor  # noqa: PLC0415 - the reactor must be created after fork

        try:
            root = build(reactor)
        except StartupError as error:
            return self._startup_failed(str(error))
        except Exception as error:  # noqa: BLE001 - a plugin's surprise must still reach the log and the exit status
            log.failure("Unexpected start-up failure")
            return self._startup_failed(f"start-up failed: {error!r}")

        def start() -> None:
            self._install_signals(reactor, signals(root))
            try:
                result = root.startService()
            except StartupError as error:
                self._abort(reactor, str(error))
                return
            except Exception as error:  # noqa: BLE001 - any start-up failure must end in a clean exit 1
                log.failure("Unexpected start-up failure")
                self._abort(reactor, f"start-up failed: {error}")
                return
            started = result if isinstance(result, defer.Deferred) else defer.succeed(None)
            if hasattr(root, "ready"):
                started.addCallback(lambda _: root.ready())
            started.addCallbacks(lambda _: self._started(reactor, root), lambda f: self._abort(reactor, f.getErrorMessage()))

        def stopping() -> defer.Deferred | None:
            self.notifier.stopping("stopping")
            self.notifier.stop_watchdog()
            if root.running:
                return root.stopService()
            return None

        reactor.addSystemEventTrigger("before", "shutdown", stopping)
        reactor.callWhenRunning(start)
        reactor.run(installSignalHandlers=False)
        if options.pid_file:
            _remove_quietly(options.pid_file)
        return self.exit_status

    def _started(self, reactor, root) -> None:
        self._signal_ready()
        status_of = getattr(root, "status_line", None)
        self.notifier.ready(status_of() if status_of else "running")
        self.notifier.start_watchdog(reactor, status_of)

    def _install_signals(self, reactor, handlers: dict) -> None:
        def toggle_debug() -> None:
            # not "level": Logger.emit takes that name for itself
            log.info("Log level is now {name}", name=self.log_control.toggle_debug())

        handlers = {signal.SIGUSR1: toggle_debug, **handlers}
        for number, handler in handlers.items():
            signal.signal(number, lambda _n, _f, handler=handler: reactor.callFromThread(handler))

    def _report_failure(self, message: str) -> None:
        """One start-up failure, to the log, the waiting parent and the service manager."""
        log.critical("{problem}", problem=message)
        self._signal_ready(message)
        self.notifier.send(STATUS=f"start-up failed: {message}")

    def _abort(self, reactor, message: str) -> None:
        self._report_failure(message)
        self.exit_status = EXIT_STARTUP_FAILED
        if reactor.running:
            reactor.stop()

    def _startup_failed(self, message: str) -> int:
        self._report_failure(message)
        if self.options.foreground:
            print(f"{self.options.program}: {message}", file=sys.stderr)
        return EXIT_STARTUP_FAILED

    def _daemonize(self) -> int | None:
        """Fork into the background; the parent waits until the child reports that it started."""
        read_end, write_end = os.pipe()
        if os.fork() > 0:
            os.close(write_end)
            with os.fdopen(read_end, "rb") as pipe:
                message = pipe.read().decode("utf-8", "replace")
            if message == "ok":
                return EXIT_OK
            return fail(self.options.program, message or "the daemon exited during start-up (see syslog)")
        os.close(read_end)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.chdir("/")
        os.umask(0o027)  # nothing the daemons write is for other users
        with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
            os.dup2(null_in.fileno(), 0)
            os.dup2(null_out.fileno(), 1)
            os.dup2(null_out.fileno(), 2)
        self._ready_pipe = write_end
        return None

    def _signal_ready(self, error: str | None = None) -> None:
        if self._ready_pipe is None:
            return
        try:
            os.write(self._ready_pipe, (error or "ok").encode())
            os.close(self._ready_pipe)
        except OSError:
            pass
        self._ready_pipe = None


def _write_pid_file(path: str) -> None:
    temporary = f"{path}.{os.getpid()}"
    with open(temporary, "w") as stream:
        stream.write(f"{os.getpid()}\n")
    os.replace(temporary, path)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise

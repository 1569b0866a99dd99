"""media-dispatcher: the program the SIP proxy and the relays connect to."""

from __future__ import annotations

import signal
import sys

from mediaproxy.cli.common import prepare
from mediaproxy.runtime import process
from mediaproxy.runtime.log import Logger

log = Logger(namespace="dispatcher")


def main(argv: list[str] | None = None) -> int:
    options, config, credentials, log_control = prepare(
        "media-dispatcher",
        "MediaProxy dispatcher: takes media requests from the SIP proxy and hands them to media relays.",
        argv,
        "dispatcher",
        lambda c: c.dispatcher.log_level,
    )
    if config.path:
        log.info("Configuration read from {path}", path=config.path)

    def build(reactor):
        from mediaproxy.dispatcher.service import DispatcherService  # noqa: PLC0415 - after daemonising

        return DispatcherService(config, credentials, options.runtime_dir, reactor)

    def signals(root):
        from twisted.internet import reactor  # noqa: PLC0415

        def terminate() -> None:
            log.info("Received a termination signal")
            if reactor.running:
                reactor.stop()

        return {signal.SIGTERM: terminate, signal.SIGINT: terminate, signal.SIGHUP: terminate}

    return process.Program(options, log_control).run(build, signals)


if __name__ == "__main__":
    sys.exit(main())

"""media-relay: allocates media ports and forwards RTP/RTCP for the calls a dispatcher hands it."""

from __future__ import annotations

import signal
import sys

from twisted.logger import Logger

from mediaproxy import process
from mediaproxy.cli.common import prepare

log = Logger(namespace="relay")


def main(argv: list[str] | None = None) -> int:
    options, config, credentials, log_control = prepare(
        "media-relay",
        "MediaProxy media relay: forwards RTP/RTCP for calls handed to it by the dispatchers.",
        argv,
        "relay",
        lambda c: c.relay.log_level,
    )
    if config.path:
        log.info("Configuration read from {path}", path=config.path)

    def build(reactor):  # noqa: ANN001, ANN202
        from mediaproxy.relay.service import RelayService, raise_file_limit  # noqa: PLC0415 - after daemonising

        limit = raise_file_limit(config.relay.port_range)
        log.debug("Open-file limit is {limit}", limit=limit)
        return RelayService(config, credentials, reactor, state_dir=options.runtime_dir)

    def signals(root):  # noqa: ANN001, ANN202
        from twisted.internet import reactor  # noqa: PLC0415

        def hard_stop() -> None:
            log.info("Received a termination signal; expiring all sessions")
            if reactor.running:
                reactor.stop()

        return {signal.SIGTERM: hard_stop, signal.SIGINT: hard_stop, signal.SIGHUP: root.graceful_shutdown}

    return process.Program(options, log_control).run(build, signals)


if __name__ == "__main__":
    sys.exit(main())

"""media-relay: allocates media ports and forwards RTP/RTCP for the calls a dispatcher hands it."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from mediaproxy.cli.common import prepare
from mediaproxy.runtime import process
from mediaproxy.runtime.log import Logger

log = Logger(namespace="relay")


CLEANUP = "--cleanup"


def main(argv: list[str] | None = None) -> int:
    options, config, credentials, log_control = prepare(
        "media-relay",
        "MediaProxy media relay: forwards RTP/RTCP for calls handed to it by the dispatchers.",
        argv,
        "relay",
        lambda c: c.relay.log_level,
        extra={CLEANUP: "undo what a relay that did not stop cleanly left behind (conntrack entries, nftables table, sysctls), then exit"},
        needs_tls=lambda o: CLEANUP not in o.flags,
    )
    if CLEANUP in options.flags:
        return cleanup(config, options.runtime_dir)
    if config.path:
        log.info("Configuration read from {path}", path=config.path)

    def build(reactor):
        from mediaproxy.relay.service import RelayService, raise_file_limit  # noqa: PLC0415 - after daemonising

        limit = raise_file_limit(config.relay.port_range)
        log.debug("Open-file limit is {limit}", limit=limit)
        return RelayService(config, credentials, reactor, state_dir=options.runtime_dir)

    def signals(root):
        from twisted.internet import reactor  # noqa: PLC0415

        def hard_stop() -> None:
            log.info("Received a termination signal; stopping")
            if reactor.running:
                reactor.stop()

        return {signal.SIGTERM: hard_stop, signal.SIGINT: hard_stop, signal.SIGHUP: root.graceful_shutdown}

    return process.Program(options, log_control).run(build, signals)


def cleanup(config, runtime_dir: str) -> int:
    """What a clean stop does to the host, for a relay that crashed (the package runs it on removal)."""
    from mediaproxy.relay.plane import host  # noqa: PLC0415
    from mediaproxy.relay.service import HOST_CHANGES_FILE, SESSIONS_FILE  # noqa: PLC0415
    from mediaproxy.statefile import JOURNAL_SUFFIX  # noqa: PLC0415

    # the sessions a stopped relay kept for its next start: there is none
    for name in (SESSIONS_FILE, SESSIONS_FILE + JOURNAL_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(runtime_dir, name))
    path = os.path.join(runtime_dir, HOST_CHANGES_FILE)
    if not os.path.exists(path):
        return process.EXIT_OK
    try:
        from mediaproxy.relay.plane.conntrack import Conntrack  # noqa: PLC0415

        conntrack = Conntrack(config.relay.conntrack_mark)
        _, removed = conntrack.flush_ours()
        conntrack.close()
        if removed:
            print(f"media-relay: removed {removed} conntrack entries")
    except Exception as error:  # noqa: BLE001 - the host changes below are undone regardless
        print(f"media-relay: cannot remove conntrack entries: {error}", file=sys.stderr)
    for change in host.undo(host.HostChanges(path)):
        print(f"media-relay: {change}")
    return process.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

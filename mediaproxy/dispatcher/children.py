"""The dispatcher's children in its service tree: each listener and each plugin a service of its
own, started in order and stopped in the reverse order (see DispatcherService)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer

from mediaproxy.plugin import IDispatcherPlugin
from mediaproxy.runtime.log import Logger

log = Logger(namespace="dispatcher")


class Listener(service.Service):
    """One listening port: ``listen()`` opens it (and says so in the log); stopping closes it,
    then runs ``after_close`` (the proxy socket drains its connections there)."""

    def __init__(self, name: str, listen: Callable[[], object], after_close: Callable[[], object] | None = None) -> None:
        self.name = name
        self._listen = listen
        self._after_close = after_close
        self.port = None  # an IListeningPort while running

    def startService(self) -> None:  # noqa: N802
        self.port = self._listen()
        service.Service.startService(self)

    @defer.inlineCallbacks
    def stopService(self) -> defer.Deferred:  # noqa: N802 - fires once the port is closed
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            yield port.stopListening()
        if self._after_close is not None:
            yield self._after_close()


class PluginService(service.Service):
    """A plugin (IDispatcherPlugin) as a child service; its failure to stop is logged and
    contained, so the others still stop."""

    def __init__(self, plugin: IDispatcherPlugin) -> None:
        self.plugin = plugin
        self.name = f"plugin {plugin.name}"

    @defer.inlineCallbacks
    def startService(self) -> defer.Deferred:  # noqa: N802 - the plugin may start asynchronously
        service.Service.startService(self)
        yield self.plugin.start()
        log.info("Plugin {plugin} started", plugin=self.plugin.name)

    def stopService(self) -> defer.Deferred:  # noqa: N802
        service.Service.stopService(self)
        return defer.maybeDeferred(self.plugin.stop).addErrback(
            lambda failure: log.failure("Plugin {plugin} failed to stop", failure, plugin=self.plugin.name)
        )


@defer.inlineCallbacks
def start_in_order(parent: service.MultiService) -> defer.Deferred:
    """Start each child after the one before has started (a plugin may start asynchronously)."""
    for child in parent:
        yield child.startService()


@defer.inlineCallbacks
def stop_in_reverse(parent: service.MultiService) -> defer.Deferred:
    """Stop the running children last first, each after the one after it has stopped."""
    for child in reversed(list(parent)):
        if child.running:
            yield child.stopService()

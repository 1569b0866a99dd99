"""The dispatcher's plugin interface and discovery.

Every job beside the core — accounting, ending expired dialogs, the management interface — is a
plugin. A plugin module in ``mediaproxy.plugins`` (or ``twisted.plugins``) exposes an object
providing :class:`IDispatcherPluginFactory`; the dispatcher asks each factory whether the
configuration enables it and, if so, for the plugin itself.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.plugin import IPlugin, getPlugins
from zope.interface import Attribute, Interface

from mediaproxy.dialogs import Dialog
from mediaproxy.runtime.log import Logger
from mediaproxy.wire.statistics import SessionRecord

log = Logger(namespace="plugins")


class IDispatcherPlugin(Interface):
    name = Attribute("short name used in logs")

    def start() -> object:
        """Start listening/connecting; may return a Deferred. Raising stops the dispatcher's start-up."""

    def stop() -> object:
        """Stop; may return a Deferred that fires when the plugin has drained."""

    def session_ended(record: SessionRecord) -> None:
        """A call's statistics after remove or expiry (with dialog_id, end_reason, timed_out[, all_streams_ice])."""

    def end_dialog(call_id: str, dialog: Dialog) -> defer.Deferred | None:
        """Ask the SIP proxy to end this dialog (its media expired, or the operator ends it):
        ``dialog`` is the proxy's dialog id, or the parties' tags
        (:class:`mediaproxy.dialogs.DialogTags`) of a call the rtpproxy module set up. A plugin
        that ends dialogs answers a Deferred of the :class:`mediaproxy.dialogs.DialogEnding`
        (cancelling it gives up); the others answer None."""


class IAccountingPlugin(IDispatcherPlugin):
    """A plugin that delivers accounting records, and says how far it is behind."""

    def accounting_status() -> dict:
        """Its backend, state, spooled and held records, delivered and rejected counts, the
        oldest record's age (the management ``accounting`` command, metrics)."""


class IDispatcherView(Interface):
    """What plugins may read and ask of the dispatcher core (``PluginContext.dispatcher``)."""

    request_stats = Attribute("the proxy requests counted: ``requests`` by (command, result), ``latency`` histograms by command")

    def call_count() -> int:
        """Calls in the call table."""

    def connected_relays() -> list:
        """The relays connected and accepted now, each with ``ip`` and ``round_trip`` (seconds or None)."""

    def accounting_status() -> list[dict]:
        """Each accounting plugin's status (IAccountingPlugin.accounting_status)."""

    def relay_summaries() -> defer.Deferred:
        """Each connected relay's summary (a dict; ``{"ip", "status": "error"}`` for one that failed)."""

    def relay_sessions() -> defer.Deferred:
        """Every connected relay's sessions (SessionRecords)."""

    def terminate(call_id: str) -> defer.Deferred:
        """End a call now; fires with what was done (``done``, and ``proxy``: what the proxy answered)."""

    def relay_log_level(ip: str, level: str) -> defer.Deferred:
        """Set relay ``ip``'s log level; fires with the level it took."""

    def drain(ip: str, on: bool = True) -> None:
        """Give relay ``ip`` no new calls, or new calls again."""


class IDispatcherPluginFactory(IPlugin):
    name = Attribute("plugin name")

    def create(configuration: object, dispatcher: object) -> IDispatcherPlugin | None:
        """Return the plugin, or None when the configuration does not enable it."""


class PluginBase:
    """Do-nothing defaults so a plugin implements only what it cares about."""

    name = "plugin"

    def start(self) -> object:
        return None

    def stop(self) -> object:
        return None

    def session_ended(self, record: SessionRecord) -> None:
        pass

    def end_dialog(self, call_id: str, dialog: Dialog) -> defer.Deferred | None:
        return None


def discover() -> list:
    import mediaproxy.plugins  # noqa: PLC0415 - imported when plugins are wanted, not at import time

    factories = {factory.name: factory for factory in getPlugins(IDispatcherPluginFactory, mediaproxy.plugins)}
    try:
        import twisted.plugins  # noqa: PLC0415

        for factory in getPlugins(IDispatcherPluginFactory, twisted.plugins):
            factories.setdefault(factory.name, factory)
    except ImportError:
        pass
    return sorted(factories.values(), key=lambda factory: factory.name)


class PluginSet:
    """Calls every plugin, containing each one's failures so the others and the media path go on
    (each starts and stops as a child of the dispatcher's service: dispatcher/children.py)."""

    def __init__(self, plugins: list) -> None:
        self.plugins = plugins

    def _each(self, method: str, *args: object) -> list:
        """Each plugin's answer that is not None."""
        answers = []
        for plugin in self.plugins:
            try:
                answer = getattr(plugin, method)(*args)
            except Exception:  # noqa: BLE001 - one plugin's bug must not hurt the others
                log.failure("Plugin {plugin} failed in {method}", plugin=plugin.name, method=method)
            else:
                if answer is not None:
                    answers.append(answer)
        return answers

    def session_ended(self, record: SessionRecord) -> None:
        self._each("session_ended", record)

    def end_dialog(self, call_id: str, dialog: Dialog) -> defer.Deferred | None:
        """The outcome of the (first) plugin that ends dialogs; None when no plugin does."""
        endings = [answer for answer in self._each("end_dialog", call_id, dialog) if isinstance(answer, defer.Deferred)]
        return endings[0] if endings else None

    def accounting_status(self) -> list[dict]:
        """The spool backlog of each accounting plugin (those that have one)."""
        return [plugin.accounting_status() for plugin in self.plugins if IAccountingPlugin.providedBy(plugin)]

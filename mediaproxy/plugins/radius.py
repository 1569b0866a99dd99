"""RADIUS accounting plugin (``accounting = radius``): Accounting-Requests through pyrad."""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import provider

from mediaproxy.accounting.plugin import AccountingPlugin, plugin_for
from mediaproxy.accounting.radius import RadiusBackend
from mediaproxy.plugin import IDispatcherPluginFactory


@provider(IPlugin, IDispatcherPluginFactory)
class RadiusAccountingFactory:
    name = "radius"

    @staticmethod
    def create(config, context) -> AccountingPlugin | None:
        return plugin_for(
            "radius", config, context, lambda: RadiusBackend(config.radius.config_file, config.find(config.radius.additional_dictionary))
        )

"""Database accounting plugin (``accounting = database``): rows through SQLObject."""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import provider

from mediaproxy.accounting.plugin import AccountingPlugin, plugin_for
from mediaproxy.accounting.sql import SQLBackend
from mediaproxy.plugin import IDispatcherPluginFactory


@provider(IPlugin, IDispatcherPluginFactory)
class DatabaseAccountingFactory:
    name = "database"

    @staticmethod
    def create(config, context) -> AccountingPlugin | None:
        return plugin_for("database", config, context, lambda: SQLBackend(config.database))

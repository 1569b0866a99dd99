"""Database accounting plugin (``accounting = database``): rows through SQLObject."""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import provider

from mediaproxy.accounting.plugin import AccountingPlugin, spool_directory
from mediaproxy.accounting.sql import SQLBackend
from mediaproxy.plugin import IDispatcherPluginFactory


@provider(IPlugin, IDispatcherPluginFactory)
class DatabaseAccountingFactory:
    name = "database"

    @staticmethod
    def create(config, context) -> AccountingPlugin | None:  # noqa: ANN001
        if "database" not in config.dispatcher.accounting:
            return None
        backend = SQLBackend(config.database)
        return AccountingPlugin("database", backend, spool_directory(config, context.runtime_dir, "database"), context.reactor)

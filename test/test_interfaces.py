"""Each edge provides the interface it declares, in full: what the core calls on it is there."""

from twisted.internet.task import Clock
from zope.interface.verify import verifyClass, verifyObject

from mediaproxy.accounting.plugin import AccountingPlugin
from mediaproxy.configuration import DispatcherConfig
from mediaproxy.dispatcher.core import Dispatcher
from mediaproxy.dispatcher.relays import RelayRegistry
from mediaproxy.dispatcher.view import DispatcherView
from mediaproxy.plugin import IAccountingPlugin, IDispatcherPlugin, IDispatcherView, PluginSet
from mediaproxy.plugins.dialog_end import DialogEndPlugin
from mediaproxy.plugins.management import ManagementPlugin
from mediaproxy.plugins.metrics import MetricsPlugin
from mediaproxy.plugins.web import WebPlugin
from mediaproxy.relay.plane.choice import NoKernelForwarding
from mediaproxy.relay.plane.interfaces import IForwarder
from mediaproxy.relay.plane.kernel import KernelForwarder
from mediaproxy.relay.plane.workers import WorkerForwarder


def test_the_dispatcher_core_provides_what_plugins_read(tmp_path):
    clock = Clock()
    config = DispatcherConfig(statistics_pull_interval=0)
    registry = RelayRegistry(clock, None, config.relay_timeout, config.relay_recover_interval)
    dispatcher = DispatcherView(Dispatcher(clock, registry, PluginSet([]), str(tmp_path), config))
    assert verifyObject(IDispatcherView, dispatcher)
    assert dispatcher.call_count() == 0 and dispatcher.connected_relays() == [] and dispatcher.accounting_status() == []


def test_plugins_and_forwarders_provide_their_interfaces():
    assert verifyClass(IAccountingPlugin, AccountingPlugin)
    for plugin in (DialogEndPlugin, ManagementPlugin, MetricsPlugin, WebPlugin):
        assert verifyClass(IDispatcherPlugin, plugin)
    for forwarder in (KernelForwarder, WorkerForwarder, NoKernelForwarding):
        assert verifyClass(IForwarder, forwarder)

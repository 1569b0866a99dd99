"""Dispatcher behaviour over real sockets: routing, failover, purge, restart, plugins, bad input."""

import json
import os
import random
import socket

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import LogLevel
from twisted.trial import unittest

from harness import FakeRelay, Stack, collect_logs, free_port, wait_for
from mediaproxy.datatypes import NetworkAddress
from mediaproxy.dispatcher.service import DispatcherService
from mediaproxy.net.tls import ClientContextFactory, Credentials
from mediaproxy.plugin import PluginBase
from mediaproxy.plugins.management import ManagementPluginFactory
from mediaproxy.testing import remove, update

AUDIO = "audio:192.0.2.10:6000:sendrecv:ice=no"


class ByAddress(random.Random):
    """Makes the 'random' order of candidate relays predictable."""

    def shuffle(self, items):
        items.sort(key=lambda link: link.ip)


class RecordingPlugin(PluginBase):
    name = "recorder"

    def __init__(self):
        self.records = []
        self.ended_dialogs = []

    def session_ended(self, record):
        self.records.append(record.as_json())  # as accounting stores it

    def end_dialog(self, call_id, dialog_id):
        self.ended_dialogs.append((call_id, dialog_id))


class BrokenPlugin(PluginBase):
    name = "broken"

    def session_ended(self, record):
        raise RuntimeError("plugin bug")


def factory_for(plugin):
    class Factory:
        name = plugin.name

        @staticmethod
        def create(configuration, context):
            return plugin

    return Factory


class DispatcherTests(unittest.TestCase):
    def make_stack(self, relay_ips=(), **options):
        self.recorder = RecordingPlugin()
        factories = [ManagementPluginFactory, factory_for(BrokenPlugin()), factory_for(self.recorder)]
        return Stack(self, relay_ips=relay_ips, plugin_factories=factories, dispatcher_options=options)

    @defer.inlineCallbacks
    def test_failover_across_hanging_and_halting_relays(self):
        stack = self.make_stack(relay_timeout=1)
        yield stack.start()
        hanging, halting, good = FakeRelay("127.0.0.2", "hang"), FakeRelay("127.0.0.3", "halting"), FakeRelay("127.0.0.4")
        for relay in (hanging, halting, good):
            yield relay.connect(stack)
        stack.dispatcher.registry.rng = ByAddress()
        proxy = yield stack.proxy()
        reply = yield proxy.request(update("call-1", "ft", media=AUDIO, media_relay="127.0.0.2"))
        self.assertEqual(reply, "127.0.0.4 50000")
        self.assertEqual(len(hanging.updates()), 1)  # the preferred one was tried first
        self.assertEqual(len(halting.updates()), 1)
        registry = stack.dispatcher.registry
        self.assertTrue(registry.get("127.0.0.2").timedout)
        self.assertFalse(registry.get("127.0.0.2").active)
        # a halting relay stays out for good, a timed-out one until it pings again
        reply = yield proxy.request(update("call-2", "ft", media=AUDIO))
        self.assertEqual(reply, "127.0.0.4 50000")
        self.assertEqual(len(hanging.updates()), 1)
        self.assertEqual(len(halting.updates()), 1)
        hanging.link.sendLine(b"ping")
        yield wait_for(lambda: hanging.pongs == 1, what="pong")
        self.assertTrue(registry.get("127.0.0.2").active)
        self.assertFalse(registry.get("127.0.0.3").active)
        # the known call goes to its own relay, even when another is preferred
        reply = yield proxy.request(update("call-1", "ft", "tt", kind="reply", media=AUDIO, media_relay="127.0.0.3"))
        self.assertEqual(reply, "127.0.0.4 50000")

    @defer.inlineCallbacks
    def test_no_relay_left_is_error(self):
        stack = self.make_stack()
        yield stack.start()
        proxy = yield stack.proxy()
        self.assertEqual((yield proxy.request(update("c", "ft", media=AUDIO))), "error")
        relay = FakeRelay("127.0.0.2", "error")
        yield relay.connect(stack)
        self.assertEqual((yield proxy.request(update("c", "ft", media=AUDIO))), "error")

    @defer.inlineCallbacks
    def test_preferred_relay_is_used_when_active(self):
        stack = self.make_stack()
        yield stack.start()
        first, second = FakeRelay("127.0.0.2"), FakeRelay("127.0.0.3")
        yield first.connect(stack)
        yield second.connect(stack)
        proxy = yield stack.proxy()
        for number in range(6):
            reply = yield proxy.request(update(f"call-{number}", "ft", media=AUDIO, media_relay="127.0.0.3"))
            self.assertEqual(reply, "127.0.0.3 50000")
        self.assertEqual(first.updates(), [])

    @defer.inlineCallbacks
    def test_single_token_replies_never_reach_the_proxy_for_sdp(self):
        stack = self.make_stack()
        yield stack.start()
        relay = FakeRelay("127.0.0.2")
        yield relay.connect(stack)
        proxy = yield stack.proxy()
        # an update without media gets the relay address, never "None"
        self.assertEqual((yield proxy.request(update("c", "ft", media=None))), "127.0.0.2")
        wrong = update("c", "ft", media=AUDIO + "," + AUDIO)
        # a relay answering fewer ports than streams is turned into error
        link = relay.link
        send = link.sendLine
        link.sendLine = lambda line: send(line.rsplit(b" ", 1)[0] if line.count(b" ") > 1 else line)
        self.assertEqual((yield proxy.request(wrong)), "error")

    @defer.inlineCallbacks
    def test_remove_accounts_and_forgets_the_call(self):
        stack = self.make_stack()
        yield stack.start()
        relay = FakeRelay("127.0.0.2")
        yield relay.connect(stack)
        proxy = yield stack.proxy()
        yield proxy.request(update("call-1", "ft", media=AUDIO, dialog_id="12:34"))
        relay.statistics = {"call_id": "call-1", "from_tag": "ft", "start_time": 100.0, "streams": []}
        self.assertEqual((yield proxy.request(remove("call-1", "ft", "tt"))), "removed")
        yield wait_for(lambda: self.recorder.records, what="the record")
        (record,) = self.recorder.records
        self.assertEqual((record["dialog_id"], record["timed_out"], record["end_reason"]), ("12:34", False, "bye"))
        self.assertNotIn("call-1", stack.dispatcher.dispatcher.table)
        # unknown here and on every relay
        self.assertEqual((yield proxy.request(remove("call-1", "ft", "tt"))), "error")
        # a call that never started is not accounted
        yield proxy.request(update("call-2", "ft", media=AUDIO))
        relay.statistics = {"call_id": "call-2", "from_tag": "ft", "start_time": None, "streams": []}
        self.assertEqual((yield proxy.request(remove("call-2", "ft"))), "removed")
        yield wait_for(lambda: "call-2" not in stack.dispatcher.dispatcher.table, what="the remove done")
        self.assertEqual(len(self.recorder.records), 1)
        # the broken plugin failed each time without affecting the recorder or the replies
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_remove_the_relay_refuses_forgets_the_call_with_a_warning(self):
        logs = collect_logs(self)
        stack = self.make_stack()
        yield stack.start()
        relay = FakeRelay("127.0.0.2")
        yield relay.connect(stack)
        proxy = yield stack.proxy()
        yield proxy.request(update("call-1", "ft", media=AUDIO))
        relay.mode = "error"
        self.assertEqual((yield proxy.request(remove("call-1", "ft"))), "removed")  # the proxy ignores it
        yield wait_for(lambda: "call-1" not in stack.dispatcher.dispatcher.table, what="the entry forgotten")
        self.assertIn("Relay 127.0.0.2 could not remove call call-1", logs.text())
        self.assertEqual(self.recorder.records, [])

    @defer.inlineCallbacks
    def test_expired_then_remove_sequence(self):
        stack = self.make_stack()
        yield stack.start()
        relay = FakeRelay("127.0.0.2")
        yield relay.connect(stack)
        proxy = yield stack.proxy()
        yield proxy.request(update("call-1", "ft", media=AUDIO, dialog_id="7:8"))
        yield proxy.request(update("call-ice", "ft", media=AUDIO, dialog_id="9:9"))
        # malformed expiries are skipped one by one, and the link and the expiries after them stay
        relay.link.sendLine(b"expired {not json")
        relay.link.sendLine(b'expired {"call_id": [], "from_tag": "ft"}')
        relay.link.sendLine(b'expired {"call_id": "call-1", "from_tag": ' + b"[" * 100000)
        relay.link.sendLine(b"expired " + b"x" * (5 * 1024 * 1024))
        statistics = {"call_id": "call-1", "from_tag": "ft", "start_time": 5.0, "streams": [{"status": "no-traffic timeout"}]}
        relay.link.sendLine(b"expired " + json.dumps(statistics).encode())
        ice = {"call_id": "call-ice", "from_tag": "ft", "start_time": 5.0, "streams": [{"status": "unselected ICE candidate"}]}
        relay.link.sendLine(b"expired " + json.dumps(ice).encode())
        relay.link.sendLine(b'expired {"call_id": "unknown", "from_tag": "ft"}')
        yield wait_for(lambda: len(self.recorder.records) == 2, what="accounting of expired calls")
        first, second = self.recorder.records
        self.assertEqual((first["timed_out"], first["all_streams_ice"], first["dialog_id"]), (True, False, "7:8"))
        self.assertEqual((second["timed_out"], second["all_streams_ice"]), (False, True))
        self.assertEqual(self.recorder.ended_dialogs, [("call-1", "7:8")])
        table = stack.dispatcher.dispatcher.table
        self.assertIsNotNone(table.get("call-1").expire_time)
        self.assertNotIn("call-ice", table)
        commands = len(relay.commands)
        self.assertEqual((yield proxy.request(remove("call-1", "ft", "tt"))), "removed")
        self.assertEqual(len(relay.commands), commands)  # answered without asking the relay
        self.assertNotIn("call-1", table)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    @defer.inlineCallbacks
    def test_reconnect_replaces_the_link_and_purges_lost_calls(self):
        stack = self.make_stack()
        yield stack.start()
        relay = FakeRelay("127.0.0.2")
        yield relay.connect(stack)
        proxy = yield stack.proxy()
        yield proxy.request(update("kept", "ft", media=AUDIO, dialog_id="1:1"))
        yield proxy.request(update("lost", "ft", media=AUDIO, dialog_id="2:2"))
        old_link = stack.dispatcher.registry.get("127.0.0.2")
        again = FakeRelay("127.0.0.2")
        again.sessions = [{"call_id": "kept", "from_tag": "ft"}]
        again.connector = reactor.connectSSL(
            "127.0.0.1", stack.relay_port, again, ClientContextFactory(Credentials(stack.certs, "relay")), bindAddress=("127.0.0.2", 0)
        )
        self.addCleanup(again.connector.disconnect)
        yield wait_for(lambda: stack.dispatcher.registry.get("127.0.0.2") is not old_link, what="the new link")
        yield wait_for(lambda: "lost" not in stack.dispatcher.dispatcher.table, what="the purge")
        self.assertIn("kept", stack.dispatcher.dispatcher.table)
        self.assertEqual(self.recorder.ended_dialogs, [("lost", "2:2")])
        yield wait_for(lambda: relay.link is None, what="the old link to close")

    @defer.inlineCallbacks
    def test_call_table_survives_a_restart(self):
        stack = self.make_stack(relay_ips=("127.0.0.1",), listen=NetworkAddress("127.0.0.1", free_port()))
        yield stack.start()
        proxy = yield stack.proxy()
        reply = yield proxy.request(update("call-1", "ft", media=AUDIO, dialog_id="3:4"))
        self.assertEqual(len(reply.split()), 2)
        proxy.close()
        yield stack.stop_dispatcher()
        with open(os.path.join(stack.runtime, "dispatcher_state")) as stream:
            state = json.load(stream)
        self.assertEqual(state["sessions"]["call-1"], {"relay_ip": "127.0.0.1", "dialog_id": "3:4", "expire_time": None, "removal": None})
        stack.dispatcher = DispatcherService(
            stack.configuration, Credentials(stack.certs, "dispatcher"), stack.runtime, reactor, [factory_for(self.recorder)]
        )
        yield stack.dispatcher.startService()
        self.assertEqual(stack.dispatcher.dispatcher.table.get("call-1").dialog_id, "3:4")
        # the relay reconnects by itself; its sessions list still has the call, so nothing is purged
        yield wait_for(lambda: "127.0.0.1" in stack.dispatcher.registry.relays, what="relay reconnect")
        proxy = yield stack.proxy()
        reply = yield proxy.request(remove("call-1", "ft", "tt"))
        self.assertEqual(reply, "removed")

    @defer.inlineCallbacks
    def test_garbage_on_the_proxy_socket(self):
        logs = collect_logs(self)
        stack = self.make_stack(relay_ips=("127.0.0.1",))
        yield stack.start()
        garbage = yield stack.proxy()
        rng = random.Random(7)
        noise = bytes(rng.randrange(256) for _ in range(5000)).replace(b"\n", b"") + b"\r\n\r\n"
        self.assertEqual((yield garbage.request(noise)), "error")
        self.assertEqual((yield garbage.request(b"update\r\nno colon here\r\n\r\n")), "error")
        self.assertEqual((yield garbage.request(b"update\r\ncseq: 1\r\n\r\n")), "error")  # no call_id
        self.assertEqual((yield garbage.request(b"x" * 100000 + b"\r\n\r\n")), "error")
        self.assertEqual((yield garbage.request(b"\r\n".join([b"h: v"] * 500) + b"\r\ncall_id: c\r\n\r\n")), "error")
        # the same connection still works
        reply = yield garbage.request(update("good", "ft", media=AUDIO))
        self.assertEqual(len(reply.split()), 2)
        # half a request and a disconnect leave nothing behind
        half = yield stack.proxy()
        half.line.transport.write(b"update\r\ncall_id: half\r\n")
        half.close()
        other = yield stack.proxy()
        reply = yield other.request(update("good-2", "ft", media=AUDIO))
        self.assertEqual(len(reply.split()), 2)
        warnings = "\n".join(logs.at_least(LogLevel.warn))
        self.assertIn("Malformed request from the proxy", warnings)
        self.assertIn("without call_id", warnings)
        self.assertIn("longer than", warnings)

    @defer.inlineCallbacks
    def test_garbage_on_the_relay_and_management_ports(self):
        stack = self.make_stack(relay_ips=("127.0.0.1",))
        yield stack.start()
        for port in (stack.relay_port, stack.management_port):
            raw = socket.create_connection(("127.0.0.1", port))
            raw.sendall(bytes(random.Random(port).randrange(256) for _ in range(20000)))
            raw.close()
        yield task.deferLater(reactor, 0.2, lambda: None)
        proxy = yield stack.proxy()
        reply = yield proxy.request(update("still-serving", "ft", media=AUDIO))
        self.assertEqual(len(reply.split()), 2)

    @defer.inlineCallbacks
    def test_management_plain_tcp(self):
        stack = self.make_stack(relay_ips=("127.0.0.1", "127.0.0.2"))
        yield stack.start()
        proxy = yield stack.proxy()
        yield proxy.request(update("call-1", "ft", media=AUDIO, media_relay="127.0.0.2"))
        garbage = [b"terminate", b"terminate a b", b"loglevel chatty", b"loglevel debug 127.0.0.1 x", b"drain 999.1.1.1", b"undrain"]
        lines = yield management(
            reactor.connectTCP,
            stack.management_port,
            [b"summary", b"sessions", b"version", b"bogus", *garbage, b"terminate nobody", b"quit"],
        )
        summary, sessions, version, bogus, *refused = lines
        self.assertEqual(refused, ["error"] * (len(garbage) + 1))  # each refused alone, the connection goes on
        self.assertEqual(sorted(item["ip"] for item in json.loads(summary)), ["127.0.0.1", "127.0.0.2"])
        self.assertEqual([item["call_id"] for item in json.loads(sessions)], ["call-1"])
        self.assertRegex(version, r"^\d+\.\d+\.\d+")
        self.assertEqual(bogus, "error")

    @defer.inlineCallbacks
    def test_management_over_tls_with_client_certificate(self):
        stack = Stack(self, relay_ips=("127.0.0.1",), dispatcher_options={"management_use_tls": True})
        yield stack.start()
        context = ClientContextFactory(Credentials(stack.certs, "client"))

        def connect(host, port, factory):
            return reactor.connectSSL(host, port, factory, context)

        lines = yield management(connect, stack.management_port, [b"summary", b"version", b"quit"])
        self.assertEqual(json.loads(lines[0])[0]["ip"], "127.0.0.1")
        self.assertEqual(len(lines), 2)


class _Lines(Protocol):
    def __init__(self, commands, done):
        self.commands, self.done, self.buffer = commands, done, b""

    def connectionMade(self):
        self.transport.write(b"".join(command + b"\r\n" for command in self.commands))

    def dataReceived(self, data):
        self.buffer += data

    def connectionLost(self, reason):
        self.done.callback(self.buffer.decode().split("\r\n")[:-1])


def management(connect, port, commands):
    done = defer.Deferred()

    class Factory(ClientFactory):
        noisy = False

        def buildProtocol(self, addr):
            return _Lines(commands, done)

    connect("127.0.0.1", port, Factory())
    return done


class PipelineFloodTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_flooding_connection_is_closed_and_others_keep_working(self):
        stack = Stack(self, relay_ips=("127.0.0.1",))
        yield stack.start()
        flood = yield stack.proxy()
        lost = defer.Deferred()
        original = flood.line.connectionLost

        def connection_lost(reason):
            original(reason)
            lost.callback(None)

        flood.line.connectionLost = connection_lost
        flood.line.transport.write(b"remove\r\ncall_id: x\r\n\r\n" * 5000)
        yield lost
        other = yield stack.proxy()
        reply = yield other.request(update("after-flood", "ft", media=AUDIO))
        self.assertEqual(len(reply.split()), 2)

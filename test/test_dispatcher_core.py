"""Dispatcher timers in memory: dead relays, expired sessions, relay recovery, state saving."""

import json
import os

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mediaproxy.configuration import DispatcherConfig
from mediaproxy.dispatcher.core import STATE_SAVE_INTERVAL, Dispatcher
from mediaproxy.dispatcher.relays import RelayLink, RelayRegistry, RelayTimeout
from mediaproxy.dispatcher.sessions import CallEntry
from mediaproxy.plugin import PluginSet


class AcceptAll:
    def accept(self, transport):
        return True

    def forget(self, transport):
        pass


def make(tmp_path, **options):
    clock = Clock()
    config = DispatcherConfig(**options)
    registry = RelayRegistry(clock, AcceptAll(), config.relay_timeout, config.relay_recover_interval)
    dispatcher = Dispatcher(clock, registry, PluginSet([]), str(tmp_path), config)
    dispatcher.start()
    return clock, registry, dispatcher


def link_from(registry, ip):
    link = RelayLink(registry)
    transport = StringTransport(peerAddress=type("Address", (), {"host": ip})())
    link.makeConnection(transport)
    link.handshakeCompleted()
    return link, transport


def test_calls_of_a_dead_relay_are_forgotten_unless_it_returns(tmp_path):
    clock, registry, dispatcher = make(tmp_path, cleanup_dead_relays_after=100)
    dispatcher.table.set("a", CallEntry("192.0.2.1"))
    dispatcher.table.set("b", CallEntry("192.0.2.2"))
    dispatcher.relay_down("192.0.2.1")
    dispatcher.relay_down("192.0.2.2")
    clock.advance(50)
    link_from(registry, "192.0.2.2")  # came back in time
    clock.advance(51)
    assert "a" not in dispatcher.table and "b" in dispatcher.table
    dispatcher.stop()


def test_ended_dialogs_without_remove_are_cleaned_up(tmp_path):
    clock, _, dispatcher = make(tmp_path, cleanup_expired_sessions_after=1000)
    dispatcher.table.set("old", CallEntry("192.0.2.1", "1:1", expire_time=clock.seconds()))
    clock.advance(600)
    assert "old" in dispatcher.table
    clock.advance(600)
    assert "old" not in dispatcher.table
    dispatcher.stop()


def test_timed_out_relay_recovers_on_ping_or_is_dropped(tmp_path):
    clock, registry, dispatcher = make(tmp_path, relay_timeout=2, relay_recover_interval=30)
    link, transport = link_from(registry, "192.0.2.9")
    failures = []
    link.send_command("summary").addErrback(lambda failure: failures.append(failure.type))
    clock.advance(2)
    assert failures == [RelayTimeout] and not link.active
    link.lineReceived(b"ping")
    assert link.active and transport.value().endswith(b"pong\r\n")
    link.send_command("summary").addErrback(lambda failure: failures.append(failure.type))
    clock.advance(2)
    clock.advance(30)
    assert transport.disconnecting
    dispatcher.stop()


def test_state_is_saved_periodically_and_atomically(tmp_path):
    clock, _, dispatcher = make(tmp_path)
    dispatcher.table.set("a", CallEntry("192.0.2.1", "4:5"))
    clock.advance(STATE_SAVE_INTERVAL)
    with open(os.path.join(tmp_path, "dispatcher_state")) as stream:
        assert json.load(stream)["sessions"]["a"]["dialog_id"] == "4:5"
    assert not os.path.exists(os.path.join(tmp_path, "dispatcher_state.tmp"))
    dispatcher.stop()


def test_corrupt_state_file_is_set_aside(tmp_path):
    with open(os.path.join(tmp_path, "dispatcher_state"), "w") as stream:
        stream.write("\x80pickle from the original")
    _, _, dispatcher = make(tmp_path)
    assert len(dispatcher.table) == 0
    assert os.path.exists(os.path.join(tmp_path, "dispatcher_state.corrupt"))
    dispatcher.stop()

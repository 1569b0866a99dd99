"""The dispatcher core in memory: the journalled call table, removes, lost relays, end reasons, timers."""

import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel

from harness import logged
from mediaproxy.configuration import DispatcherConfig
from mediaproxy.dialogs import DialogEnding
from mediaproxy.dispatcher.core import Dispatcher
from mediaproxy.dispatcher.relays import RelayLink, RelayRegistry, RelayTimeout
from mediaproxy.dispatcher.sessions import CallEntry
from mediaproxy.dispatcher.view import DispatcherView
from mediaproxy.plugin import PluginBase, PluginSet
from mediaproxy.testing import remove, update
from mediaproxy.wire import statistics
from mediaproxy.wire.control import RequestFramer


class AcceptAll:
    def accept(self, transport):
        return True

    def forget(self, transport):
        pass


class Recorder(PluginBase):
    name = "recorder"

    def __init__(self):
        self.records = []
        self.ended = []
        self.proxy_answers = None  # what the proxy makes of end_dialog: ended at once unless a test says otherwise

    def session_ended(self, record):
        self.records.append(record.as_json())  # as accounting stores it

    def end_dialog(self, call_id, dialog_id):
        self.ended.append((call_id, dialog_id))
        return defer.succeed(DialogEnding(True, "OK")) if self.proxy_answers is None else self.proxy_answers


def make(tmp_path, **options):
    clock = Clock()
    config = DispatcherConfig(**{"statistics_pull_interval": 0, **options})
    registry = RelayRegistry(clock, AcceptAll(), config.relay_timeout, config.relay_recover_interval)
    recorder = Recorder()
    dispatcher = Dispatcher(clock, registry, PluginSet([recorder]), str(tmp_path), config)
    dispatcher.recorder = recorder
    dispatcher.start()
    return clock, registry, dispatcher


def with_relay(tmp_path, ip="192.0.2.1"):
    """A dispatcher with one relay connected, whose listing on connect is already read."""
    _, registry, dispatcher = make(tmp_path)
    link, transport = link_from(registry, ip)
    commands(transport)
    return dispatcher, link, transport


def link_from(registry, ip):
    link = RelayLink(registry)
    transport = StringTransport(peerAddress=type("Address", (), {"host": ip})())
    link.makeConnection(transport)
    link.handshakeCompleted()
    return link, transport


def commands(transport):
    """The commands written to a relay so far, as (name, seq, header lines); the transport is emptied."""
    written = transport.value().decode()
    transport.clear()
    found = []
    for block in written.split("\r\n\r\n"):
        lines = [line for line in block.split("\r\n") if line]
        if lines:
            name, seq = lines[0].split()
            found.append((name, int(seq), lines[1:]))
    return found


def answer(link, seq, payload):
    link.lineReceived(f"{seq} {payload}".encode())


def request(text):
    (parsed,) = RequestFramer().feed(text)
    return parsed


def handled(dispatcher, text):
    results = []
    dispatcher.handle(request(text)).addCallback(results.append)
    return results


def record(call_id, **extra):
    return {"call_id": call_id, "from_tag": "ft", "start_time": 1000.0, "duration": 5, "streams": [], **extra}


def set_up_call(dispatcher, link, transport, call_id, dialog_id=""):
    reply = handled(dispatcher, update(call_id, "ft", media="audio:192.0.2.10:6000:sendrecv", dialog_id=dialog_id))
    ((_, seq, _),) = commands(transport)
    answer(link, seq, f"{link.ip} 40000")
    assert reply == [f"{link.ip} 40000"]


def test_calls_of_a_lost_relay_end_with_the_last_statistics_pulled(tmp_path):
    clock, registry, dispatcher = make(tmp_path, lost_relay_grace=100, statistics_pull_interval=30)
    link, transport = link_from(registry, "192.0.2.1")
    ((_, seq, _),) = commands(transport)  # the listing asked on connect
    answer(link, seq, statistics.format_page([], None))
    set_up_call(dispatcher, link, transport, "a", "1:2")
    set_up_call(dispatcher, link, transport, "b")
    clock.advance(30)
    ((name, seq, lines),) = commands(transport)
    assert (name, lines) == ("sessions", ["page: 0"])
    answer(link, seq, statistics.format_page([json.dumps(record("a", yours=True))], 5))
    ((_, seq, lines),) = commands(transport)
    assert lines == ["page: 5"]
    answer(link, seq, statistics.format_page([json.dumps(record("b", start_time=None))], None))
    pulled_at = clock.seconds()
    link.connectionLost(None)
    clock.advance(99)
    assert "a" in dispatcher.table and dispatcher.recorder.records == []
    clock.advance(1)
    assert len(dispatcher.table) == 0
    (lost,) = dispatcher.recorder.records
    assert (lost["call_id"], lost["end_reason"], lost["timed_out"], lost["statistics_at"]) == ("a", "relay lost", False, pulled_at)
    assert "yours" not in lost and dispatcher.recorder.ended == [("a", "1:2")]
    dispatcher.stop()


def pulled(clock, transport, link, *pages):
    """A statistics pull is due and answered: each page's records as given, or "error"."""
    clock.advance(30)
    for number, page in enumerate(pages):
        ((name, seq, _),) = commands(transport)
        assert name == "sessions"
        last = number == len(pages) - 1
        answer(
            link,
            seq,
            page if page == "error" else statistics.format_page([json.dumps(item) for item in page], None if last else number + 1),
        )


def test_a_call_set_up_again_under_its_call_id_never_gets_the_statistics_of_the_one_before(tmp_path):
    clock, registry, dispatcher = make(tmp_path, lost_relay_grace=100, statistics_pull_interval=30)
    link, transport = link_from(registry, "192.0.2.1")
    ((_, seq, _),) = commands(transport)
    answer(link, seq, statistics.format_page([], None))
    set_up_call(dispatcher, link, transport, "a", "1:2")
    pulled(clock, transport, link, [record("a", duration=7)])
    assert handled(dispatcher, remove("a", "ft", "tt")) == ["removed"]
    ((_, seq, _),) = commands(transport)
    answer(link, seq, json.dumps(record("a", duration=9)))
    set_up_call(dispatcher, link, transport, "a", "3:4")  # the same Call-ID again, before the next pull
    link.connectionLost(None)
    clock.advance(100)
    (first,) = dispatcher.recorder.records  # the second call has no statistics yet: none is made up
    assert (first["end_reason"], first["duration"]) == ("bye", 9)
    assert dispatcher.recorder.ended == [("a", "3:4")] and len(dispatcher.table) == 0
    dispatcher.stop()


def test_a_statistics_pull_that_fails_half_way_leaves_the_last_complete_one(tmp_path):
    clock, registry, dispatcher = make(tmp_path, lost_relay_grace=100, statistics_pull_interval=30)
    link, transport = link_from(registry, "192.0.2.1")
    ((_, seq, _),) = commands(transport)
    answer(link, seq, statistics.format_page([], None))
    set_up_call(dispatcher, link, transport, "a")
    set_up_call(dispatcher, link, transport, "b")
    pulled(clock, transport, link, [record("a", duration=7)], [record("b", duration=8)])
    first_pull = clock.seconds()
    pulled(clock, transport, link, [record("a", duration=37)], "error")
    link.connectionLost(None)
    clock.advance(100)
    lost = {item["call_id"]: (item["duration"], item["statistics_at"]) for item in dispatcher.recorder.records}
    assert lost == {"a": (7, first_pull), "b": (8, first_pull)}
    dispatcher.stop()


def test_a_relay_back_within_the_grace_keeps_its_calls(tmp_path):
    clock, registry, dispatcher = make(tmp_path, lost_relay_grace=100)
    dispatcher.table.set("a", CallEntry("192.0.2.2"))
    dispatcher.relay_down("192.0.2.2")
    clock.advance(50)
    link, transport = link_from(registry, "192.0.2.2")
    ((_, seq, _),) = commands(transport)
    answer(link, seq, statistics.format_page([json.dumps(record("a", yours=True))], None))
    clock.advance(51)
    assert "a" in dispatcher.table and dispatcher.recorder.records == []
    dispatcher.stop()


def test_remove_is_answered_at_once_and_accounted_when_the_relay_answers(tmp_path):
    dispatcher, link, transport = with_relay(tmp_path)
    set_up_call(dispatcher, link, transport, "a", "3:4")
    assert handled(dispatcher, remove("a", "ft", "tt")) == ["removed"]
    assert handled(dispatcher, remove("a", "ft", "tt")) == ["removed"]  # a retransmission is not sent twice
    ((name, seq, lines),) = commands(transport)
    assert name == "remove" and "call_id: a" in lines
    assert dispatcher.recorder.records == []
    answer(link, seq, json.dumps(record("a")))
    (done,) = dispatcher.recorder.records
    assert (done["end_reason"], done["timed_out"], done["dialog_id"]) == ("bye", False, "3:4")
    assert "a" not in dispatcher.table
    dispatcher.stop()


def test_a_remove_waits_for_a_relay_that_is_away_even_across_a_restart(tmp_path):
    clock, registry, dispatcher = make(tmp_path)
    link, transport = link_from(registry, "192.0.2.1")
    commands(transport)
    set_up_call(dispatcher, link, transport, "a")
    link.connectionLost(None)
    assert handled(dispatcher, remove("a", "ft", "tt")) == ["removed"]
    dispatcher.stop()
    clock, registry, dispatcher = make(tmp_path)
    assert dispatcher.table.get("a").removal == ["call_id: a", "from_tag: ft", "to_tag: tt"]
    link, transport = link_from(registry, "192.0.2.1")
    ((_, seq, _),) = commands(transport)
    answer(link, seq, json.dumps([record("a")]))  # an original relay's answer: all at once
    ((name, seq, lines),) = commands(transport)
    assert name == "remove" and lines == ["call_id: a", "from_tag: ft", "to_tag: tt"]
    answer(link, seq, json.dumps(record("a")))
    assert [done["call_id"] for done in dispatcher.recorder.records] == ["a"]
    dispatcher.stop()


def test_a_relay_reconnecting_gives_back_the_calls_the_table_lost(tmp_path):
    _, registry, dispatcher = make(tmp_path)
    dispatcher.table.set("gone", CallEntry("192.0.2.1", "5:5"))
    link, transport = link_from(registry, "192.0.2.1")
    ((_, seq, _),) = commands(transport)
    mine, other = record("mine", yours=True, dialog_id="8:9"), record("other")
    answer(link, seq, statistics.format_page([json.dumps(mine), json.dumps(other)], None))
    assert dispatcher.table.get("mine") == CallEntry("192.0.2.1", "8:9")
    assert "other" not in dispatcher.table  # another dispatcher's call
    assert "gone" not in dispatcher.table and dispatcher.recorder.ended == [("gone", "5:5")]
    dispatcher.stop()


def test_end_reasons_and_timed_out(tmp_path):
    dispatcher, link, transport = with_relay(tmp_path)
    cases = {
        "shutdown": (record("shutdown", end_reason="relay shutdown", streams=[{"status": "closed"}]), "relay shutdown", False),
        "old-shutdown": (record("old-shutdown", streams=[{"status": "closed"}]), "relay shutdown", False),
        "silent": (record("silent", streams=[{"status": "closed"}, {"status": "no-traffic timeout"}]), "no-traffic timeout", True),
        "held": (record("held", streams=[{"status": "on hold timeout"}]), "on-hold timeout", True),
        "kernel": (record("kernel", end_reason="conntrack timeout"), "conntrack timeout", True),
        "ice": (record("ice", streams=[{"status": "unselected ICE candidate"}]), "unselected ICE candidate", False),
    }
    for call_id, (statistics_record, _, _) in cases.items():
        dispatcher.table.set(call_id, CallEntry("192.0.2.1"))
        link.lineReceived(b"expired " + json.dumps(statistics_record).encode())
    got = {done["call_id"]: (done["end_reason"], done["timed_out"]) for done in dispatcher.recorder.records}
    assert got == {call_id: (reason, timed_out) for call_id, (_, reason, timed_out) in cases.items()}
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


def test_each_command_times_out_at_its_own_deadline_with_one_timer(tmp_path):
    """Commands share one timer for the oldest deadline; an answered one is not timed out, a later
    one is at its own time, and one sent from a timed-out one's callback gets its full time."""
    clock, registry, dispatcher = make(tmp_path, relay_timeout=4, relay_recover_interval=300)
    link, transport = link_from(registry, "192.0.2.9")
    ((_, listing, _),) = commands(transport)
    answer(link, listing, statistics.format_page([], None))  # the listing asked for on connect
    outcome = {}

    def send(name):
        deferred = link.send_command("summary")
        deferred.addCallbacks(lambda payload: outcome.__setitem__(name, payload), lambda failure: outcome.__setitem__(name, failure.type))
        return deferred

    send("first")
    clock.advance(1)
    send("second").addCallback(lambda _: send("fifth") and None)  # sent from its callback, once timed out
    (_, first_seq, _), (_, second_seq, _) = commands(transport)
    clock.advance(1)
    send("third")
    answer(link, first_seq, "{}")
    assert outcome == {"first": "{}"}
    clock.advance(2)  # the first's deadline: it was answered
    assert outcome == {"first": "{}"} and len(clock.getDelayedCalls()) >= 1
    send("fourth").addErrback(lambda _: None)
    clock.advance(1)  # the second's deadline; the third's is a second later
    assert outcome["second"] is RelayTimeout and "third" not in outcome
    clock.advance(1)  # the third's deadline is not put off by the fifth's
    assert outcome["third"] is RelayTimeout and "fourth" not in outcome
    link.lineReceived(b"ping")  # recovered
    clock.advance(2)
    assert outcome["fourth"] is RelayTimeout and "fifth" not in outcome
    clock.advance(1)
    assert outcome["fifth"] is RelayTimeout and not link.pending
    assert not [call for call in clock.getDelayedCalls() if call.func == link._expire]  # nothing left to time out
    dispatcher.stop()


def _journal_lines(tmp_path):
    with open(os.path.join(tmp_path, "dispatcher_state.journal")) as stream:
        return stream.read().splitlines()


def test_every_change_is_in_the_journal_at_once_and_survives_a_kill(tmp_path):
    _, _, dispatcher = make(tmp_path)
    dispatcher.table.set("a", CallEntry("192.0.2.1", "4:5"))
    dispatcher.table.set("b", CallEntry("192.0.2.1"))
    dispatcher.table.pop("b")
    assert [json.loads(line) for line in _journal_lines(tmp_path)] == [
        {"set": "a", "value": {"relay_ip": "192.0.2.1", "dialog_id": "4:5", "expire_time": None, "removal": None}},
        {"set": "b", "value": {"relay_ip": "192.0.2.1", "dialog_id": None, "expire_time": None, "removal": None}},
        {"pop": "b"},
    ]
    # killed: no stop(); a torn last line (the machine went down mid-write) is ignored
    with open(os.path.join(tmp_path, "dispatcher_state.journal"), "a") as stream:
        stream.write('{"set": "c", "val')
    _, _, again = make(tmp_path)
    assert again.table.entries == {"a": CallEntry("192.0.2.1", "4:5")}
    again.stop()
    with open(os.path.join(tmp_path, "dispatcher_state")) as stream:
        assert list(json.load(stream)["sessions"]) == ["a"]
    assert not os.path.exists(os.path.join(tmp_path, "dispatcher_state.journal"))
    assert not os.path.exists(os.path.join(tmp_path, "dispatcher_state.tmp"))


def test_the_journal_is_folded_into_the_snapshot_as_it_grows(tmp_path):
    _, _, dispatcher = make(tmp_path)
    for number in range(3000):  # calls come and go; a hundred stay
        dispatcher.table.set(f"call-{number}", CallEntry("192.0.2.1"))
        if number % 30:
            dispatcher.table.pop(f"call-{number}")
    assert len(_journal_lines(tmp_path)) <= 1000
    _, _, again = make(tmp_path)  # snapshot + journal, without a clean stop
    assert set(again.table.entries) == {f"call-{number}" for number in range(0, 3000, 30)}
    again.stop()
    os.close(dispatcher.state_file.fd)  # the first instance was "killed"


def test_corrupt_state_file_is_set_aside(tmp_path):
    with open(os.path.join(tmp_path, "dispatcher_state"), "w") as stream:
        stream.write("\x80pickle from the original")
    _, _, dispatcher = make(tmp_path)
    assert len(dispatcher.table) == 0
    assert os.path.exists(os.path.join(tmp_path, "dispatcher_state.corrupt"))
    dispatcher.stop()


def _two_relays(tmp_path, **options):
    clock, registry, dispatcher = make(tmp_path, **options)
    links = []
    for ip in ("192.0.2.1", "192.0.2.2"):
        link, transport = link_from(registry, ip)
        ((_, seq, _),) = commands(transport)
        answer(link, seq, statistics.format_page([], None))
        links.append((link, transport))
    return clock, dispatcher, links


def test_an_in_dialog_update_for_another_dispatchers_call_goes_to_the_relay_that_has_it(tmp_path):
    _, dispatcher, [(first, first_transport), (second, second_transport)] = _two_relays(tmp_path)
    reply = handled(dispatcher, update("theirs", "ft", "tt", kind="reply", media="audio:192.0.2.20:7000:sendrecv"))
    ((name, first_seq, lines),) = commands(first_transport)
    assert (name, lines) == ("sessions", ["page: 0", "call_id: theirs"])
    ((_, second_seq, _),) = commands(second_transport)
    # the second relay has it: the update goes there without waiting for the first to answer
    answer(second, second_seq, statistics.format_page([json.dumps(record("theirs"))], None))
    ((name, seq, lines),) = commands(second_transport)
    assert name == "update" and "call_id: theirs" in lines and "to_tag: tt" in lines
    assert commands(first_transport) == []
    answer(second, seq, "192.0.2.2 41000")
    assert reply == ["192.0.2.2 41000"]
    answer(first, first_seq, statistics.format_page([], None))  # late: changes nothing
    assert commands(first_transport) == commands(second_transport) == []
    # the call stays its creator's: expiry and accounting are the other dispatcher's
    assert "theirs" not in dispatcher.table
    dispatcher.stop()


def test_an_in_dialog_update_no_relay_has_gets_a_new_relay_once_all_have_answered(tmp_path):
    clock, dispatcher, [(first, first_transport), (second, second_transport)] = _two_relays(tmp_path, relay_timeout=2)
    reply = handled(dispatcher, update("nobodys", "ft", "tt", media="audio:192.0.2.20:7000:sendrecv"))
    ((_, seq, _),) = commands(first_transport)
    # an original relay lists everything: only the asked call counts, and under its own tags only
    answer(first, seq, json.dumps([record("other"), record("nobodys", from_tag="someone-else")]))
    assert commands(first_transport) == [] and reply == []
    clock.advance(2)  # the second never answers: it counts as not having the call
    (name, seq, lines), *_ = commands(first_transport)
    assert name == "update" and "call_id: nobodys" in lines
    answer(first, seq, "192.0.2.1 42000")
    assert reply == ["192.0.2.1 42000"]
    assert dispatcher.table.get("nobodys").relay_ip == "192.0.2.1"
    dispatcher.stop()


def test_a_call_removed_through_another_dispatcher_is_forgotten_at_the_next_pull(tmp_path):
    clock, registry, dispatcher = make(tmp_path, statistics_pull_interval=60)
    link, transport = link_from(registry, "192.0.2.1")
    ((_, seq, _),) = commands(transport)
    answer(link, seq, statistics.format_page([], None))
    for call_id in ("kept", "removed-elsewhere"):
        set_up_call(dispatcher, link, transport, call_id, "1:2")
    clock.advance(60)
    ((name, seq, lines),) = commands(transport)
    assert (name, lines) == ("sessions", ["page: 0"])
    answer(link, seq, statistics.format_page([json.dumps(record("kept"))], None))
    assert "kept" in dispatcher.table and "removed-elsewhere" not in dispatcher.table
    # the other dispatcher accounted it and its proxy ended the dialog: nothing to do here
    assert dispatcher.recorder.records == [] and dispatcher.recorder.ended == []
    dispatcher.stop()


def test_the_periodic_jobs_are_services_that_stop_with_the_dispatcher(tmp_path):
    clock, registry, dispatcher = make(tmp_path, statistics_pull_interval=30)
    assert sorted(job.name for job in dispatcher.timers) == ["expired call checks", "statistics pulls"]
    assert all(job.running for job in dispatcher.timers) and clock.getDelayedCalls()
    dispatcher.stop()
    assert not any(job.running for job in dispatcher.timers)
    assert [call for call in clock.getDelayedCalls() if call.active()] == []  # nothing left to fire


def test_one_info_line_per_call_event_and_requests_at_debug(tmp_path):
    dispatcher, link, transport = with_relay(tmp_path)
    with logged() as logs:
        set_up_call(dispatcher, link, transport, "a", "3:4")
        reply = handled(dispatcher, update("a", "ft", "tt", kind="reply", media="audio:198.51.100.20:7000:sendrecv"))
        ((_, seq, _),) = commands(transport)
        answer(link, seq, "192.0.2.1 40002")
        assert reply == ["192.0.2.1 40002"]
        handled(dispatcher, remove("a", "ft", "tt"))
        ((_, seq, _),) = commands(transport)
        stream = {"caller_packets": 150, "caller_bytes": 30000, "callee_packets": 140, "callee_bytes": 28000}
        answer(link, seq, json.dumps(record("a", duration=3, streams=[stream])))
    assert logs.at(LogLevel.info) == [
        "Call a set up on relay 192.0.2.1",
        "Call a answered (relay 192.0.2.1)",
        "Call a ended (bye) after 3s on relay 192.0.2.1; caller sent 150 packets (30000 bytes), callee 140 packets (28000 bytes)",
    ]
    debug = logs.at(LogLevel.debug)
    assert len([line for line in debug if line.startswith("Proxy request ")]) == 3
    assert "Proxy remove answered 'removed' in " in " ".join(debug)
    dispatcher.stop()


def test_a_re_invite_gets_its_own_line_and_a_183_then_200_one(tmp_path):
    dispatcher, link, transport = with_relay(tmp_path)
    set_up_call(dispatcher, link, transport, "a", "3:4")

    def relayed(text):
        reply = handled(dispatcher, text)
        ((_, seq, _),) = commands(transport)
        answer(link, seq, "192.0.2.1 40002")
        assert reply == ["192.0.2.1 40002"]

    with logged() as logs:
        for _ in range(2):  # 183 with SDP, then 200 with SDP: one answer
            relayed(update("a", "ft", "tt", kind="reply", media="audio:198.51.100.20:7000:sendrecv"))
        relayed(update("a", "ft", "tt", cseq=2, media="audio:192.0.2.10:6000:sendonly"))
        relayed(update("a", "ft", "tt", kind="reply", cseq=2, media="audio:198.51.100.20:7000:recvonly"))
        # the callee's re-INVITE: its own tag and CSeq
        relayed(update("a", "tt", "ft", cseq=1, media="audio:198.51.100.20:7000:sendrecv"))
        relayed(update("a", "tt", "ft", kind="reply", cseq=1, media="audio:192.0.2.10:6000:sendrecv"))
    assert logs.at(LogLevel.info) == [
        "Call a answered (relay 192.0.2.1)",
        "Call a: re-INVITE answered (relay 192.0.2.1)",
        "Call a: re-INVITE answered (relay 192.0.2.1)",
    ]
    dispatcher.stop()


def test_terminate_ends_the_dialog_or_removes_the_session_with_its_tags(tmp_path):
    dispatcher, link, transport = with_relay(tmp_path)
    set_up_call(dispatcher, link, transport, "with-dialog", "7:8")
    set_up_call(dispatcher, link, transport, "without")
    done = []
    DispatcherView(dispatcher).terminate("with-dialog").addCallback(done.append)
    assert done == [{"done": "dialog ended through the proxy", "proxy": "OK"}] and dispatcher.recorder.ended == [("with-dialog", "7:8")]
    assert commands(transport) == []  # the proxy's BYEs and remove follow; nothing goes to the relay now
    DispatcherView(dispatcher).terminate("without").addCallback(done.append)
    ((name, seq, lines),) = commands(transport)
    assert (name, lines) == ("sessions", ["page: 0", "call_id: without"])
    answer(link, seq, statistics.format_page([json.dumps(record("without", to_tag="tt"))], None))
    assert done[-1] == {"done": "session removed"}
    ((name, seq, lines),) = commands(transport)
    assert (name, lines) == ("remove", ["call_id: without", "from_tag: ft", "to_tag: tt"])
    answer(link, seq, json.dumps(record("without", to_tag="tt")))
    (accounted,) = dispatcher.recorder.records
    assert (accounted["call_id"], accounted["end_reason"]) == ("without", "terminated") and "without" not in dispatcher.table
    failed = []
    DispatcherView(dispatcher).terminate("nobody").addErrback(failed.append)
    assert failed and failed[0].check(ValueError)
    dispatcher.stop()


def terminate_through_a_proxy_that(dispatcher, link, transport, answers):
    """terminate of a call with a dialog whose proxy ``answers`` (a Deferred); returns what
    terminate answered once its session was removed on the relay, and the record."""
    dispatcher.recorder.proxy_answers = answers
    set_up_call(dispatcher, link, transport, "stuck", "7:8")
    done = []
    DispatcherView(dispatcher).terminate("stuck").addCallback(done.append)
    return done


def test_terminate_removes_the_session_when_the_proxy_refuses(tmp_path):
    dispatcher, link, transport = with_relay(tmp_path)
    done = terminate_through_a_proxy_that(
        dispatcher, link, transport, defer.succeed(DialogEnding(False, "the proxy answered 404 Not found"))
    )
    ((name, seq, lines),) = commands(transport)
    assert (name, lines) == ("sessions", ["page: 0", "call_id: stuck"])
    answer(link, seq, statistics.format_page([json.dumps(record("stuck", to_tag="tt"))], None))
    assert done == [{"done": "session removed", "proxy": "the proxy answered 404 Not found"}]
    ((name, seq, lines),) = commands(transport)
    assert name == "remove"
    answer(link, seq, json.dumps(record("stuck", to_tag="tt")))
    (accounted,) = dispatcher.recorder.records
    assert accounted["end_reason"] == "terminated" and "stuck" not in dispatcher.table
    dispatcher.stop()


def test_terminate_gives_a_silent_proxy_two_seconds(tmp_path):
    clock, registry, dispatcher = make(tmp_path)
    link, transport = link_from(registry, "192.0.2.1")
    commands(transport)
    gave_up = []
    silent = defer.Deferred(lambda waiting: gave_up.append(True))
    done = terminate_through_a_proxy_that(dispatcher, link, transport, silent)
    clock.advance(1.9)
    assert commands(transport) == [] and done == [] and not gave_up
    clock.advance(0.1)
    ((name, seq, _),) = commands(transport)
    assert name == "sessions" and gave_up == [True]  # the plugin was told to stop trying
    answer(link, seq, statistics.format_page([json.dumps(record("stuck", to_tag="tt"))], None))
    (outcome,) = done
    assert outcome["done"] == "session removed" and "no answer within 2s" in outcome["proxy"]
    dispatcher.stop()


def test_records_name_the_relay_and_the_user(tmp_path):
    dispatcher, link, transport = with_relay(tmp_path)
    for call_id, fields in (("from-uri", {"from_uri": "sip:alice@example.com;transport=tcp"}), ("said", {"username": "bob@example.net"})):
        set_up_call(dispatcher, link, transport, call_id)
        handled(dispatcher, remove(call_id, "ft", "tt"))
        ((_, seq, _),) = commands(transport)
        answer(link, seq, json.dumps(record(call_id, **fields)))  # as an original relay reports it: username null
    usernames = [(done["call_id"], done["username"], done["relay"]) for done in dispatcher.recorder.records]
    assert usernames == [("from-uri", "alice", "192.0.2.1"), ("said", "bob@example.net", "192.0.2.1")]
    dispatcher.stop()


def test_an_unreadable_kept_record_costs_only_its_own_call():
    from mediaproxy.dispatcher.lastknown import LastKnown

    last_known = LastKnown()
    report = last_known.start("192.0.2.1")
    report.add_json(record("a", duration=3))
    report.add_json({"call_id": "b", "from_tag": "ft", "duration": "long"})
    report.page_end(50.0)
    last_known.finish("192.0.2.1", report)
    with logged() as logs:
        found = last_known.take("192.0.2.1", {"a": CallEntry("192.0.2.1"), "b": CallEntry("192.0.2.1")})
    assert list(found) == ["a"] and (found["a"].duration, found["a"].statistics_at) == (3, 50.0)
    (error,) = logs.at(LogLevel.error)
    assert "unreadable" in error and "duration" in error

"""Ending expired dialogs over a real UNIX datagram socket, against a scripted proxy peer."""

import json
import os
import pathlib
import random
import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel
from twisted.trial import unittest

from harness import collect_logs, wait_for
from mediaproxy.configuration import Configuration, OpenSIPSConfig
from mediaproxy.dialogs import DialogEnding, DialogTags
from mediaproxy.dispatcher.service import PluginContext
from mediaproxy.plugins.dialog_end import DialogEndPlugin, kamailio_request, opensips_dialog_id, opensips_request


class ProxyPeer(DatagramProtocol):
    """Plays the proxy's MI socket: records requests and answers with what the test queued."""

    def __init__(self):
        self.requests = []
        self.answers = []

    def datagramReceived(self, data, address):
        self.requests.append(data)
        if self.answers:
            answer = self.answers.pop(0)
            if answer is not None:
                self.transport.write(answer(json.loads(data)) if callable(answer) else answer, address)


class ProxySocketCase(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="mp-dlg-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.logs = collect_logs(self)
        self.peer = ProxyPeer()
        self.proxy_path = os.path.join(self.directory, "proxy.sock")
        port = reactor.listenUNIXDatagram(self.proxy_path, self.peer)
        self.addCleanup(port.stopListening)

    def plugin(self, flavour):
        config = Configuration(opensips=OpenSIPSConfig(socket_path=self.proxy_path, flavour=flavour))
        context = PluginContext(dispatcher=None, reactor=reactor, credentials=None, runtime_dir=self.directory)
        plugin = DialogEndPlugin(config, context, timeout=0.3, attempts=2, rng=random.Random(5))
        plugin.retry_delay = 0.05
        plugin.start()
        self.addCleanup(plugin.stop)
        return plugin


class DialogEndTests(ProxySocketCase):
    def test_request_formats(self):
        self.assertEqual(
            opensips_request("5f3a9c1e", "2290:9624"),
            b'{"jsonrpc": "2.0", "id": "5f3a9c1e", "method": "dlg_end_dlg", "params": ["2290:9624"]}',
        )
        self.assertEqual(
            kamailio_request(7, "call-1", "2290:9624"), b'{"jsonrpc":"2.0","method":"dlg.end_dlg","params":[2290,9624],"id":7}'
        )

    @defer.inlineCallbacks
    def test_opensips_result(self):
        plugin = self.plugin("opensips")
        expected_id = f"{random.Random(5).randrange(1, 2**32):x}"
        self.peer.answers.append(lambda request: json.dumps({"jsonrpc": "2.0", "result": "OK", "id": request["id"]}).encode())
        plugin.end_dialog("call-1", "2290:9624")
        yield wait_for(lambda: not plugin.pending and self.peer.requests, what="the reply")
        self.assertEqual(self.peer.requests, [opensips_request(expected_id, "2290:9624")])
        self.assertIn("The proxy ended dialog 2290:9624 of call call-1", self.logs.text())

    @defer.inlineCallbacks
    def test_opensips_error_is_logged_and_not_retried(self):
        plugin = self.plugin("opensips")
        self.peer.answers.append(
            lambda request: json.dumps(
                {"jsonrpc": "2.0", "error": {"code": 500, "message": "Internal error"}, "id": request["id"]}
            ).encode()
        )
        ending = yield plugin.end_dialog("call-1", "1:2")
        self.assertIn("MI request dlg_end_dlg failed with: 500 Internal error", self.logs.text())
        self.assertEqual(len(self.peer.requests), 1)
        self.assertEqual(ending, DialogEnding(False, "the proxy answered 500 Internal error"))

    @defer.inlineCallbacks
    def test_a_404_is_asked_once_more_with_the_call_id_then_answered(self):
        plugin = self.plugin("opensips")
        not_found = {"error": {"code": 404, "message": "Requested Dialog not found"}}
        for _ in range(2):
            self.peer.answers.append(lambda request: json.dumps({"jsonrpc": "2.0", **not_found, "id": request["id"]}).encode())
        ending = yield plugin.end_dialog("gone@host", "6c2.a4f0e1")
        self.assertEqual([json.loads(request)["params"] for request in self.peer.requests], [["6c2.a4f0e1"], ["gone@host"]])
        self.assertEqual(ending, DialogEnding(False, "the proxy answered 404 Requested Dialog not found"))
        # the outcome logged once, the first 404 not at all
        self.assertEqual(self.logs.text().count("failed with: 404"), 1)

    @defer.inlineCallbacks
    def test_status_line_reply_with_one_pending_request(self):
        plugin = self.plugin("opensips")
        self.peer.answers.append(b"200 OK\n")
        plugin.end_dialog("call-1", "1:2")
        yield wait_for(lambda: not plugin.pending and self.peer.requests, what="the reply")
        self.assertIn("The proxy ended dialog 1:2 of call call-1: 200 OK", self.logs.text())

    @defer.inlineCallbacks
    def test_no_reply_is_retried_then_given_up(self):
        plugin = self.plugin("opensips")
        plugin.end_dialog("call-1", "1:2")
        yield wait_for(lambda: "Giving up ending dialog 1:2" in self.logs.text(), what="giving up")
        self.assertEqual(len(self.peer.requests), 2)
        self.assertIn("did timeout", self.logs.text())
        self.assertEqual(plugin.pending, {})

    @defer.inlineCallbacks
    def test_kamailio_flavour_sends_integers(self):
        plugin = self.plugin("kamailio")
        self.peer.answers.append(lambda request: json.dumps({"jsonrpc": "2.0", "result": {}, "id": request["id"]}, indent="\t").encode())
        plugin.end_dialog("call-9", "11:22")
        yield wait_for(lambda: not plugin.pending and self.peer.requests, what="the reply")
        request = json.loads(self.peer.requests[0])
        self.assertEqual((request["method"], request["params"]), ("dlg.end_dlg", [11, 22]))
        self.assertIsInstance(request["id"], int)
        self.assertIn("The proxy ended dialog 11:22", self.logs.text())

    @defer.inlineCallbacks
    def test_kamailio_ends_a_call_without_dialog_id_by_its_tags(self):
        """A call of the rtpproxy module: dlg.terminate_dlg with the Call-ID and both tags."""
        plugin = self.plugin("kamailio")
        self.peer.answers.append(lambda request: json.dumps({"jsonrpc": "2.0", "result": {}, "id": request["id"]}).encode())
        plugin.end_dialog("call-7@host", DialogTags("caller-tag", "callee-tag"))
        yield wait_for(lambda: not plugin.pending and self.peer.requests, what="the reply")
        request = json.loads(self.peer.requests[0])
        self.assertEqual((request["method"], request["params"]), ("dlg.terminate_dlg", ["call-7@host", "caller-tag", "callee-tag"]))
        self.assertIn("The proxy ended dialog tags caller-tag/callee-tag of call call-7@host", self.logs.text())

    @defer.inlineCallbacks
    def test_opensips_ends_a_call_without_dialog_id_by_its_call_id(self):
        plugin = self.plugin("opensips")
        self.peer.answers.append(lambda request: json.dumps({"jsonrpc": "2.0", "result": "OK", "id": request["id"]}).encode())
        plugin.end_dialog("call-8@host", DialogTags("a", "b"))
        yield wait_for(lambda: not plugin.pending and self.peer.requests, what="the reply")
        request = json.loads(self.peer.requests[0])
        self.assertEqual((request["method"], request["params"]), ("dlg_end_dlg", ["call-8@host"]))

    @defer.inlineCallbacks
    def test_missing_proxy_socket(self):
        plugin = self.plugin("opensips")
        plugin.target = os.path.join(self.directory, "nobody-listens.sock")
        plugin.end_dialog("call-1", "1:2")
        yield wait_for(lambda: "Giving up ending dialog 1:2" in self.logs.text(), what="giving up")

    @defer.inlineCallbacks
    def test_opensips_takes_any_dialog_id_as_it_is(self):
        plugin = self.plugin("opensips")
        self.peer.answers.append(lambda request: json.dumps({"jsonrpc": "2.0", "result": "OK", "id": request["id"]}).encode())
        plugin.end_dialog("call-3", "6c2.a4f0e1")
        yield wait_for(lambda: not plugin.pending and self.peer.requests, what="the reply")
        request = json.loads(self.peer.requests[0])
        self.assertEqual((request["method"], request["params"]), ("dlg_end_dlg", ["6c2.a4f0e1"]))

    def test_kamailio_refuses_what_is_not_h_i(self):
        plugin = self.plugin("kamailio")
        for dialog_id in ("not-a-dialog", "1:", "1:2:3", "١:2", "1:" + "9" * 11):
            plugin.end_dialog("call-2", dialog_id)
        self.assertEqual(plugin.pending, {})
        self.assertEqual(self.peer.requests, [])
        self.assertEqual(sum("is not H:I" in line for line in self.logs.at_least(LogLevel.error)), 5)


RECORDED = json.loads((pathlib.Path(__file__).parent / "data" / "opensips-3.6.8-dlg_end_dlg.json").read_text())


class OpenSIPS36(DatagramProtocol):
    """Answers dlg_end_dlg exactly as OpenSIPS 3.6.8 does (test/data/opensips-3.6.8-dlg_end_dlg.json):
    its dialogs by their printed ID or their Call-ID; the module's decimal dialog_id is not found."""

    def __init__(self):
        self.requests = []
        self.ended = []
        self.by_name = {}
        for dialog in RECORDED["dialogs"]:
            self.by_name[dialog["printed_id"]] = self.by_name[dialog["call_id"]] = dialog

    def datagramReceived(self, data, address):
        request = json.loads(data)
        self.requests.append(request)
        (name,) = request["params"]
        dialog = self.by_name.get(name) if request["method"] == "dlg_end_dlg" else None
        if dialog is None or dialog in self.ended:
            answer = RECORDED["answers"]["decimal dialog_id"]
        else:
            self.ended.append(dialog)
            answer = RECORDED["answers"]["printed ID" if name == dialog["printed_id"] else "Call-ID"]
        self.transport.write(json.dumps({"jsonrpc": "2.0", **answer, "id": request["id"]}).encode(), address)


class OpenSIPS36Tests(ProxySocketCase):
    def setUp(self):
        super().setUp()
        self.opensips = OpenSIPS36()
        self.opensips_path = os.path.join(self.directory, "opensips-mi.sock")
        port = reactor.listenUNIXDatagram(self.opensips_path, self.opensips)
        self.addCleanup(port.stopListening)

    def test_the_decimal_dialog_id_converts_to_the_printed_id(self):
        for dialog in RECORDED["dialogs"]:
            self.assertEqual(dialog["dialog_id"], str(dialog["h_entry"] << 32 | dialog["h_id"]))
            self.assertEqual(opensips_dialog_id(dialog["dialog_id"]), dialog["printed_id"])
        self.assertEqual(opensips_dialog_id(str(0 << 32 | 16)), "0.01")
        for other in ("2290:9624", "6c2.a4f0e1", "1" * 21, str(2**64), "١٢"):
            self.assertEqual(opensips_dialog_id(other), other)

    @defer.inlineCallbacks
    def test_both_recorded_dialogs_are_ended_with_one_request_each(self):
        plugin = self.plugin("opensips")
        plugin.target = self.opensips_path
        for dialog in RECORDED["dialogs"]:
            ending = yield plugin.end_dialog(dialog["call_id"], dialog["dialog_id"])
            self.assertEqual(ending, DialogEnding(True, "OK"))
        self.assertEqual([request["params"] for request in self.opensips.requests], [["65f.d3f55a53"], ["1f5.6700b655"]])
        self.assertEqual(self.opensips.ended, RECORDED["dialogs"])
        self.assertEqual(self.logs.text().count("The proxy ended dialog"), 2)

    @defer.inlineCallbacks
    def test_a_dialog_it_knows_only_by_call_id_is_ended_by_the_second_request(self):
        plugin = self.plugin("opensips")
        plugin.target = self.opensips_path
        (first, _) = RECORDED["dialogs"]
        # a dialog id of some other form (the original MediaProxy scripts send H:I) is sent as it is
        ending = yield plugin.end_dialog(first["call_id"], "2290:9624")
        self.assertEqual(ending, DialogEnding(True, "OK"))
        self.assertEqual([request["params"] for request in self.opensips.requests], [["2290:9624"], [first["call_id"]]])
        self.assertNotIn("failed with", self.logs.text())

    @defer.inlineCallbacks
    def test_cancelled_by_a_deadline_it_says_why_and_stops(self):
        plugin = self.plugin("opensips")
        plugin.target = os.path.join(self.directory, "nobody-listens.sock")
        waiting = plugin.end_dialog("call-1", "1:2")
        yield wait_for(lambda: "trying again" in self.logs.text(), what="a failed attempt")
        waiting.cancel()
        ending = yield waiting
        self.assertFalse(ending.ended)
        self.assertIn("the proxy could not be reached: cannot send to", ending.answer)
        self.assertEqual(plugin.pending, {})

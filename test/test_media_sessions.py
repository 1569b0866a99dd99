"""media-sessions against a running dispatcher with two relays, over plain TCP and TLS."""

import io
import json
import os
import shutil
import tempfile

from twisted.internet import defer, threads
from twisted.trial import unittest

from harness import Stack, wait_for
from mediaproxy.cli import sessions as cli
from mediaproxy.testing import update


class MediaSessionsTests(unittest.TestCase):
    @defer.inlineCallbacks
    def run_cli(self, *argv):
        out = io.StringIO()
        code = yield threads.deferToThread(cli.main, list(argv), out)
        return code, out.getvalue()

    @defer.inlineCallbacks
    def start(self, tls):
        self.stack = Stack(self, relay_ips=("127.0.0.1", "127.0.0.2"), dispatcher_options={"management_use_tls": tls})
        yield self.stack.start()
        proxy = yield self.stack.proxy()
        yield proxy.request(update("call-a", "ft", media="audio:192.0.2.10:6000:sendrecv:ice=no", media_relay="127.0.0.1"))
        yield proxy.request(update("call-a", "ft", "tt", kind="reply", media="audio:198.51.100.20:7000:sendrecv:ice=no"))
        yield proxy.request(
            update(
                "call-b", "ft", media="audio:192.0.2.10:6000:sendrecv:ice=no,video:192.0.2.10:6002:sendrecv:ice=no", media_relay="127.0.0.2"
            )
        )

    @defer.inlineCallbacks
    def test_tables_over_plain_tcp(self):
        yield self.start(tls=False)
        code, output = yield self.run_cli("--no-tls", "--port", str(self.stack.management_port))
        self.assertEqual(code, 0)
        self.assertIn("Relays (2)", output)
        self.assertIn("Sessions (2)", output)
        relay_lines = [line for line in output.splitlines() if line.startswith("127.0.0.")]
        self.assertEqual(len(relay_lines), 2)
        self.assertTrue(any("audio 1, video 1" in line for line in relay_lines))
        self.assertIn("alice@example.com -> bob@example.com", output)
        self.assertIn("audio Unknown/Unknown", output)  # answered, no media yet
        self.assertIn("ringing", output)  # call-b has no answer

    @defer.inlineCallbacks
    def test_json_over_tls_with_client_certificate(self):
        yield self.start(tls=True)
        code, output = yield self.run_cli("--certs", self.stack.certs, "--port", str(self.stack.management_port), "--json")
        self.assertEqual(code, 0)
        answers = json.loads(output)
        self.assertEqual(sorted(relay["ip"] for relay in answers["summary"]), ["127.0.0.1", "127.0.0.2"])
        self.assertEqual(sorted(session["call_id"] for session in answers["sessions"]), ["call-a", "call-b"])
        code, output = yield self.run_cli("sessions", "--certs", self.stack.certs, "--port", str(self.stack.management_port), "--json")
        self.assertEqual(len(json.loads(output)), 2)

    @defer.inlineCallbacks
    def test_address_tls_and_certificates_come_from_config_ini(self):
        yield self.start(tls=True)
        config = tempfile.mkdtemp(prefix="mp-test-")
        self.addCleanup(shutil.rmtree, config, True)

        def write(use_tls):
            with open(os.path.join(config, "config.ini"), "w") as file:
                file.write(f"[Dispatcher]\nlisten_management = any:{self.stack.management_port}\nmanagement_use_tls = {use_tls}\n")
                file.write(f"[TLS]\ncerts_path = {self.stack.certs}\n")

        write("yes")
        code, output = yield self.run_cli("summary", "--json", "--config-dir", config)
        self.assertEqual(code, 0, output)
        self.assertEqual(len(json.loads(output)["summary"]), 2)
        # plain TCP now, against the TLS listener: no answer
        write("no")
        err = io.StringIO()
        self.patch(cli.sys, "stderr", err)
        code, _ = yield self.run_cli("summary", "--config-dir", config)
        self.assertEqual(code, 1)
        self.assertIn("closed the connection", err.getvalue())

    @defer.inlineCallbacks
    def test_errors_are_one_line(self):
        yield self.start(tls=True)
        code, _ = yield self.run_cli("--no-tls", "--port", "1")
        self.assertEqual(code, 1)
        code, _ = yield self.run_cli("--certs", "/nonexistent", "--port", str(self.stack.management_port))
        self.assertEqual(code, 1)

    @defer.inlineCallbacks
    def test_control_commands(self):
        yield self.start(tls=False)
        port = ("--no-tls", "--port", str(self.stack.management_port))
        proxy = yield self.stack.proxy()
        code, output = yield self.run_cli("drain", "127.0.0.2", *port)
        self.assertEqual((code, output), (0, "relay 127.0.0.2 takes no new calls\n"))
        reply = yield proxy.request(
            update("call-c", "ft", media="audio:192.0.2.10:6000:sendrecv:ice=no", media_relay="127.0.0.2", dialog_id="")
        )
        self.assertTrue(reply.startswith("127.0.0.1 "), reply)  # the drained relay is passed over, even when preferred
        code, output = yield self.run_cli("summary", *port)
        self.assertIn("active, drained", output)
        code, output = yield self.run_cli("undrain", "127.0.0.2", *port)
        self.assertEqual((code, output), (0, "relay 127.0.0.2 takes new calls\n"))
        reply = yield proxy.request(update("call-d", "ft", media="audio:192.0.2.10:6000:sendrecv:ice=no", media_relay="127.0.0.2"))
        self.assertTrue(reply.startswith("127.0.0.2 "), reply)

        code, output = yield self.run_cli("loglevel", "debug", *port)
        self.assertEqual((code, output), (0, "dispatcher: log level DEBUG\n"))
        code, output = yield self.run_cli("loglevel", "info", "127.0.0.1", *port)
        self.assertEqual((code, output), (0, "relay 127.0.0.1: log level INFO\n"))
        err = io.StringIO()
        self.patch(cli.sys, "stderr", err)
        code, _ = yield self.run_cli("loglevel", "chatty", *port)
        self.assertEqual(code, 1)
        self.assertIn("answered error to 'loglevel chatty'", err.getvalue())

        # a call with a dialog, but nothing here to ask the proxy: its session is removed and the answer says why
        code, output = yield self.run_cli("terminate", "call-a", *port)
        self.assertEqual((code, output), (0, "call call-a: session removed (no plugin here ends dialogs)\n"))
        # a call without a dialog: its session is removed on the relay, and the remove accounts it
        code, output = yield self.run_cli("terminate", "call-c", *port)
        self.assertEqual((code, output), (0, "call call-c: session removed\n"))
        yield wait_for(lambda: "call-c" not in self.stack.dispatcher.dispatcher.table, what="call-c gone")
        code, output = yield self.run_cli("sessions", "--json", *port)
        self.assertNotIn("call-c", [session["call_id"] for session in json.loads(output)])
        code, _ = yield self.run_cli("terminate", "call-c", *port)
        self.assertEqual(code, 1)
        with self.assertRaises(SystemExit):  # a usage error, before anything is sent
            yield self.run_cli("terminate", *port)


def test_formatting_helpers():
    assert cli.human_duration(3725) == "01:02:05" and cli.human_duration(90000) == "1d 01:00:00"
    assert cli.human_bytes(512) == "512 B" and cli.human_bytes(2048) == "2.0 KiB"
    assert cli.human_rate(163840.0) == "163.8 kbps"
    assert cli.relay_rows([{"status": "error", "ip": "192.0.2.1"}])[0][:2] == ["192.0.2.1", "error"]

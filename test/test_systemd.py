"""The service manager's side: sd_notify datagrams from the real programs, journal output, SIGUSR1,
the proxy sockets' permissions."""

import grp
import os
import signal
import socket
import stat
import subprocess
import time

import pytest
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher

from harness import Program, free_port, program_command
from mediaproxy import datatypes as dt
from mediaproxy.net import certgen
from mediaproxy.runtime.systemd import Notifier


class NotifySocket:
    """Stands in for systemd's notification socket."""

    def __init__(self, path):
        self.path = str(path)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.settimeout(0.1)
        self.messages = []

    def receive_until(self, condition, what, timeout=20):
        deadline = time.monotonic() + timeout
        while not condition(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} from the program; it sent {self.messages}")
            try:
                self.messages.append(dict(line.split("=", 1) for line in self.socket.recv(4096).decode().splitlines()))
            except TimeoutError:
                pass

    def close(self):
        self.socket.close()


def start(program, config, runtime, notify, log, watchdog_usec=None):
    env = {**os.environ, "NOTIFY_SOCKET": notify.path}
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    command = [*program_command(program), "--systemd", "--config-dir", str(config), "--runtime-dir", str(runtime)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def write_config(tmp_path, relay_port, extra=""):
    config = tmp_path / "config"
    certgen.generate(str(config / "tls"))
    (config / "config.ini").write_text(
        f"[Dispatcher]\nlisten = 127.0.0.1:{relay_port}\nlisten_management = 127.0.0.1:{free_port()}\n{extra}"
        f"[Relay]\ndispatchers = 127.0.0.1:{relay_port}\nrelay_ip = 127.0.0.1\nport_range = 46000:46100\nforwarding = userspace\n"
    )
    return config


def ready(messages):
    return any(message.get("READY") == "1" for message in messages)


def test_readiness_status_watchdog_and_journal_priorities(tmp_path):
    relay_port = free_port()
    config = write_config(tmp_path, relay_port)
    notify = NotifySocket(tmp_path / "notify")
    processes = []
    try:
        # the relay with no dispatcher yet: ready once it tried, and says so; it keeps trying
        relay = start("media-relay", config, tmp_path / "relay-run", notify, tmp_path / "relay.log")
        processes.append(relay)
        notify.receive_until(ready, "READY=1 (relay)")
        assert notify.messages[-1]["STATUS"] == "connected to 0 of 1 dispatchers; 0 sessions"
        assert notify.messages[-1]["MAINPID"] == str(relay.pid)
        notify.messages.clear()
        dispatcher = start("media-dispatcher", config, tmp_path / "run", notify, tmp_path / "dispatcher.log", watchdog_usec=200_000)
        processes.append(dispatcher)
        notify.receive_until(ready, "READY=1 (dispatcher)")
        # the watchdog is fed from the reactor, and STATUS follows the relays that connect
        notify.receive_until(lambda messages: sum("WATCHDOG" in message for message in messages) >= 3, "WATCHDOG=1")
        notify.receive_until(lambda messages: any(m.get("STATUS", "").startswith("1 relays connected") for m in messages), "STATUS")
        dispatcher.send_signal(signal.SIGTERM)
        assert dispatcher.wait(timeout=15) == 0
        notify.receive_until(lambda messages: any(message.get("STOPPING") == "1" for message in messages), "STOPPING=1")
        journal = (tmp_path / "dispatcher.log").read_text().splitlines()
        assert journal and all(line.startswith("<") and line[1] in "01234567" and line[2] == ">" for line in journal), journal
        assert "<6>INFO     Dispatcher started" in journal
        assert any(
            line.startswith("<4>WARNING  Cannot connect to dispatcher") for line in (tmp_path / "relay.log").read_text().splitlines()
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        notify.close()


def test_sigusr1_toggles_debug_without_a_traceback(tmp_path):
    config = write_config(tmp_path, free_port())
    dispatcher = Program("media-dispatcher", str(config), str(tmp_path / "run"), str(tmp_path / "dispatcher.log"))
    try:
        dispatcher.wait_for_log("Dispatcher started")
        for level in ("DEBUG", "INFO"):
            dispatcher.process.send_signal(signal.SIGUSR1)
            dispatcher.wait_for_log(f"Log level is now {level}")
        assert "Traceback" not in dispatcher.output() and "CRITICAL" not in dispatcher.output()
    finally:
        dispatcher.process.kill()
        dispatcher.process.wait()


def test_proxy_sockets_get_the_configured_mode_and_group(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    config = write_config(tmp_path, free_port(), f"socket_mode = 0600\nsocket_group = {group}\n")
    runtime = tmp_path / "run"
    dispatcher = Program("media-dispatcher", str(config), str(runtime), str(tmp_path / "dispatcher.log"))
    try:
        dispatcher.wait_for_log("Dispatcher started")
        for name in ("dispatcher.sock", "opensips.sock"):
            info = os.stat(runtime / name)
            assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_gid == os.getgid(), name
    finally:
        dispatcher.process.kill()
        dispatcher.process.wait()
    command = [*program_command("media-dispatcher"), "--no-fork", "--config-dir", str(config), "--runtime-dir", str(runtime)]
    (config / "config.ini").write_text(
        (config / "config.ini").read_text().replace(f"socket_group = {group}", "socket_group = mp-no-such-group")
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1] == "media-dispatcher: [Dispatcher] socket_group = 'mp-no-such-group': there is no such group"
    )


def test_notifier_without_a_socket_does_nothing_and_watchdog_interval_is_halved(tmp_path):
    silent = Notifier({})
    assert silent.address is None
    silent.ready("running")  # no error without NOTIFY_SOCKET
    listener = NotifySocket(tmp_path / "notify")
    notifier = Notifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    clock = task.Clock()
    statuses = iter(["a", "a", "b"])
    notifier.start_watchdog(clock, lambda: next(statuses))
    clock.advance(2)
    clock.advance(2)
    listener.receive_until(lambda messages: len(messages) >= 5, "five datagrams")
    # a tick at once, then every 2 s (half of WATCHDOG_USEC); STATUS only when it changed
    assert listener.messages == [{"WATCHDOG": "1"}, {"STATUS": "a"}, {"WATCHDOG": "1"}, {"WATCHDOG": "1"}, {"STATUS": "b"}]
    notifier.stop_watchdog()
    assert Notifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    listener.close()


@pytest.mark.parametrize("text", ["0660", "660", "0o660"])
def test_socket_mode_values(text):
    assert dt.file_mode(text) == 0o660


@pytest.mark.parametrize("text", ["", "rw-rw----", "0888", "7777", "66", "0660x", "-660", "٦٦٠", "0" * 400])
def test_socket_mode_garbage_is_refused(text):
    with pytest.raises(ValueError, match="octal"):
        dt.file_mode(text)


@pytest.mark.parametrize("text", ["mediaproxy x", "-g", "a;b", "grp/../x", "x\ny", "١٢"])
def test_socket_group_garbage_is_refused(text):
    with pytest.raises(ValueError, match="group name or number"):
        dt.optional_group(text)
    assert dt.optional_group("  ") is None and dt.optional_group("123") == "123" and dt.optional_group("kamailio") == "kamailio"


@pytest.mark.parametrize("value", ["", "abc", "-5", "0", "1e6", "9" * 400])
def test_watchdog_garbage_means_no_watchdog(value):
    assert Notifier({"WATCHDOG_USEC": value}).watchdog_interval is None


def test_an_unreachable_notify_socket_is_logged_once_and_ignored(tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(3):
            notifier.ready("running")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [formatEvent(event) for event in events if "Cannot notify" in formatEvent(event)] == [
        f"Cannot notify the service manager at {tmp_path / 'nobody-listens'}: No such file or directory"
    ]

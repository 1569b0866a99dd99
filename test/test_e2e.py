"""End to end: a real Kamailio and sipp, callers behind a NAT, two relays forwarding in the kernel.

    caller 10.0.1.2 -- nat 10.0.1.1 | 192.0.2.1 (MASQUERADE) -- 192.0.2.254 core 198.51.100.254 -- callee 198.51.100.2
                                                                relays 203.0.113.1, 203.0.113.2

The core namespace runs Kamailio, the dispatcher (SQLite accounting, dialog ending through
Kamailio's jsonrpcs) and two relays. The SDP addresses are private, so media only works through
the relay, which learns the NAT's public address from the first packets. The test's own UDP
sockets sit on the SDP ports in the caller's and callee's namespaces and check every packet.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest
from deployment import Deployment, wait_until
from netns import Topology, require_root_and_tools, udp_socket
from sip_scenarios import Callee, Caller, recv_bye, scenario, sdp, trigger, wait

from harness import Program

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
CALLER_IP, CALLEE_IP, PROXY_IP, NAT_PUBLIC = "10.0.1.2", "198.51.100.2", "192.0.2.254", "192.0.2.1"
RELAYS = ("203.0.113.1", "203.0.113.2")
LINK_IP = "203.0.113.254"
IDLE_TIMEOUT = 8
AUDIO, VIDEO = (6000, 7000), (6002, 7002)
RELAY_IN_SDP = r"c=IN IP4 203\.0\.113\.[12]"
RTPPROXY_SOCK = "udp:127.0.0.1:7722"  # the dispatcher's rtpproxy_listen, in the core namespace


def require(program: str, package: str) -> None:
    if shutil.which(program) is None:
        pytest.fail(f"{program} is missing: apt-get install {package} (.ci/run does this)", pytrace=False)


@pytest.fixture(scope="module")
def network():
    require_root_and_tools()
    require("kamailio", "kamailio")
    require("sipp", "sip-tester")
    net = Topology()
    try:
        for role in ("caller", "nat", "core", "callee"):
            net.add(role)
        net.link("caller", f"{CALLER_IP}/24", "nat", "10.0.1.1/24")
        _, public = net.link("core", f"{PROXY_IP}/24", "nat", f"{NAT_PUBLIC}/24")
        net.link("core", "198.51.100.254/24", "callee", f"{CALLEE_IP}/24")
        net.run("caller", "ip route add default via 10.0.1.1")
        net.run("nat", f"ip route add default via {PROXY_IP} && sysctl -qw net.ipv4.ip_forward=1")
        net.run("nat", f"iptables -t nat -A POSTROUTING -o {public} -j MASQUERADE")
        net.run("callee", "ip route add default via 198.51.100.254")
        for address in (*RELAYS, LINK_IP):
            net.run("core", f"ip addr add {address}/32 dev lo")
        net.run("core", f"sysctl -qw net.netfilter.nf_conntrack_udp_timeout_stream={IDLE_TIMEOUT}")
        yield net
    finally:
        net.remove()


class Stack:
    """Kamailio, the dispatcher and two relays in the core namespace."""

    def __init__(self, network: Topology, tmp_path, kamailio_config: str = "e2e.cfg.in", dispatcher: str = "") -> None:
        self.network = network
        self.tmp = tmp_path
        self.namespace = network.name("core")
        self.rpc_socket = tmp_path / "kamailio_rpc.sock"
        self.database = tmp_path / "accounting.sqlite"
        self.kamailio_config = kamailio_config
        self.deployment = Deployment(
            tmp_path,
            f"[Dispatcher]\nlisten = {LINK_IP}:25060\naccounting = database\n{dispatcher}"
            f"[Database]\ndburi = sqlite://{self.database}\n"
            f"[OpenSIPS]\nsocket_path = {self.rpc_socket}\nflavour = kamailio\n"
            f"[Relay]\ndispatchers = {LINK_IP}:25060\nforwarding = kernel\nstream_timeout = 5\n",
            namespace=self.namespace,
        )
        self.relays: dict[str, Program] = {}
        self.kamailio: subprocess.Popen | None = None
        self.calls: list = []

    def start(self) -> None:
        self.deployment.start_dispatcher()
        for number, ip in enumerate(RELAYS, 1):
            self.start_relay(ip, number)
        self._start_kamailio()

    def start_relay(self, ip: str, number: int) -> Program:
        config = self.tmp / f"relay{number}"
        config.mkdir(exist_ok=True)
        shutil.copytree(self.deployment.config / "tls", config / "tls", dirs_exist_ok=True)
        text = (self.deployment.config / "config.ini").read_text()
        text = text.replace("relay_ip = 127.0.0.1", f"relay_ip = {ip}\nlink_source_ip = {ip}\nconntrack_mark = {0x4D50 + number}")
        text = text.replace("port_range = 43000:43998", f"port_range = {40000 + 1000 * number}:{40998 + 1000 * number}")
        (config / "config.ini").write_text(text)
        relay = Program(
            "media-relay",
            str(config),
            str(self.tmp / f"relay{number}-run"),
            str(self.tmp / f"relay{number}-{time.monotonic_ns()}.log"),
            prefix=("ip", "netns", "exec", self.namespace),
        )
        relay.wait_for_log("Connected to dispatcher")
        self.deployment.dispatcher.wait_for_log(f"Relay {ip} connected")
        self.relays[ip] = relay
        return relay

    def _start_kamailio(self) -> None:
        template = open(os.path.join(HERE, "sip", self.kamailio_config)).read()
        for marker, value in {
            "@RTPPROXY_SOCK@": RTPPROXY_SOCK,
            "@SIP_IP@": PROXY_IP,
            "@CALLEE@": CALLEE_IP,
            "@MODULES@": MODULES,
            "@RPC_SOCKET@": self.rpc_socket,
            "@DISPATCHER_SOCKET@": self.deployment.socket_path,
        }.items():
            template = template.replace(marker, str(value))
        (self.tmp / "kamailio.cfg").write_text(template)
        runtime = self.tmp / "kamailio-run"
        runtime.mkdir()
        self.kamailio_log = self.tmp / "kamailio.log"
        with open(self.kamailio_log, "w") as log:
            self.kamailio = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, "kamailio", "-f", str(self.tmp / "kamailio.cfg"), "-DD", "-E", "-Y", str(runtime)]
                + ["-m", "64", "-M", "8"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: self.rpc_socket.exists() or self.kamailio.poll() is not None, "Kamailio to start", timeout=20)
        assert self.kamailio.poll() is None, self.kamailio_log.read_text()[-3000:]

    def stop(self) -> None:
        if self.kamailio is not None and self.kamailio.poll() is None:
            self.kamailio.terminate()
            self.kamailio.wait(timeout=10)
        for relay in self.relays.values():
            if relay.process.poll() is None:
                relay.process.kill()
                relay.process.wait()
        self.deployment.kill()

    def sessions(self) -> list[dict]:
        return json.loads(self.deployment.management(b"sessions"))

    def records(self) -> dict[str, dict]:
        try:
            rows = sqlite3.connect(self.database).execute("SELECT call_id, info FROM media_sessions").fetchall()
        except sqlite3.OperationalError:
            return {}
        return {call_id: json.loads(info) for call_id, info in rows}

    def context(self) -> str:
        parts = [("kamailio", self.kamailio_log.read_text()[-2500:]), ("dispatcher", self.deployment.dispatcher.output()[-2500:])]
        parts += [(f"relay {ip}", relay.output()[-1500:]) for ip, relay in self.relays.items()]
        return "".join(f"\n--- {name}:\n{text}" for name, text in parts)


def started(running: Stack):  # a fixture's generator
    """The stack for a module's tests, stopped after them whatever happened."""
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def running_stack(network, tmp_path_factory):
    yield from started(Stack(network, tmp_path_factory.mktemp("e2e")))


def released(running: Stack):  # a fixture's generator
    """The stack for one test; what is left of its calls goes after it, so the next has the ports."""
    yield running
    while running.calls:
        running.calls.pop().release()


@pytest.fixture
def stack(running_stack):
    yield from released(running_stack)


class Call:
    """One sipp caller/callee pair on the test's scenarios, and the test's RTP sockets on the SDP ports."""

    def __init__(self, stack: Stack, name: str, caller_steps: list[str], callee_steps: list[str], media=(AUDIO,), slot: int = 0) -> None:
        self.stack, self.name = stack, name
        stack.calls.append(self)
        directory = stack.tmp / name
        directory.mkdir()
        (directory / "uac.xml").write_text(scenario(f"{name} caller", caller_steps))
        (directory / "uas.xml").write_text(scenario(f"{name} callee", callee_steps))
        network = stack.network
        self.callee_sockets = [udp_socket(network.name("callee"), (CALLEE_IP, callee)) for _, callee in media]
        self.caller_sockets = [udp_socket(network.name("caller"), (CALLER_IP, caller)) for caller, _ in media]
        self.caller_trigger = udp_socket(network.name("caller"), (CALLER_IP, 0))
        common = ["-m", "1", "-nostdin", "-timeout", "90s", "-timeout_error", "-trace_err", "-trace_msg", "-max_recv_loops", "10"]
        self.uas_port, self.uac_port = 5060 + 2 * slot, 5070 + 2 * slot
        self.uas = self._sipp(network.name("callee"), directory, "uas.xml", CALLEE_IP, self.uas_port, common)
        self.uac = self._sipp(network.name("caller"), directory, "uac.xml", CALLER_IP, self.uac_port, [*common, f"{PROXY_IP}:5060"])
        self.call_id = f"1-{self.uac.pid}@{CALLER_IP}"
        self.caller_trace = directory / f"uac_{self.uac.pid}_messages.log"  # sipp -trace_msg

    @staticmethod
    def _sipp(namespace: str, directory, scenario_file: str, ip: str, port: int, extra: list[str]) -> subprocess.Popen:
        command = ["ip", "netns", "exec", namespace, "sipp", "-sf", str(directory / scenario_file), "-i", ip, "-p", str(port), *extra]
        return subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def session(self, condition=lambda session: True, what: str = "the call on a relay") -> dict:
        found: dict = {}

        def check() -> bool:
            for session in self.stack.sessions():
                if session["call_id"] == self.call_id and condition(session):
                    found.update(session)
                    return True
            return False

        try:
            wait_until(check, f"{what} ({self.name})", timeout=30)
        except AssertionError as error:
            # what the caller's sipp sent and got, and the programs' logs: what a rare miss needs
            trace = self.caller_trace.read_text()[-3000:] if self.caller_trace.exists() else "(none)"
            raise AssertionError(f"{error}\n--- caller's SIP messages:\n{trace}{self.stack.context()}") from None
        return found

    def answered(self) -> dict:
        return self.session(lambda session: session["start_time"] is not None and session["streams"], "the answered call")

    def media(self, stream: int = 0, packets: int = 20, session: dict | None = None, swapped: bool = False) -> tuple[str, str]:
        """RTP both ways through the relay on one stream; returns the relay's (caller side, callee side).

        ``swapped``: the callee made the first offer, so the relay has the parties the other way round.
        """
        session = session or self.answered()
        entry = session["streams"][stream]
        caller_key, callee_key = ("callee", "caller") if swapped else ("caller", "callee")
        caller_side, callee_side = _address(entry[f"{caller_key}_local"]), _address(entry[f"{callee_key}_local"])
        caller, callee = self.caller_sockets[stream], self.callee_sockets[stream]
        # the callee speaks first; the private SDP addresses are learnt from the NAT'ed packets
        callee.sendto(_rtp(0, 8), callee_side)
        if entry[f"{caller_key}_remote"] != "Unknown":  # the caller is known already: this one reaches it
            assert caller.recvfrom(2048) == (_rtp(0, 8), caller_side), self.stack.context()
        for sequence in range(1, packets + 1):
            caller.sendto(_rtp(sequence, 0), caller_side)
            assert callee.recvfrom(2048) == (_rtp(sequence, 0), callee_side), self.stack.context()
            callee.sendto(_rtp(sequence, 8), callee_side)
            assert caller.recvfrom(2048) == (_rtp(sequence, 8), caller_side), self.stack.context()
        return entry[f"{caller_key}_local"], entry[f"{callee_key}_local"]

    def caller_passed(self, text: str, direction: str = "sent") -> None:
        """Wait until the caller's sipp is past a message holding ``text`` (e.g. ``CSeq: 3 ACK``)
        that it sent (or with ``direction`` "received", got): it then waits for the test's next move."""

        def logged() -> bool:
            try:
                records = self.caller_trace.read_text(errors="replace").split("-----------------------------------------------")
            except FileNotFoundError:
                return False
            # a record is the separator's date line, then "UDP message sent (...)" or "... received ..."
            return any(f"message {direction}" in record.partition("\n")[2].partition("\n")[0] and text in record for record in records)

        wait_until(logged, f"the caller to have {direction} {text!r} ({self.name})", timeout=30)

    def next(self) -> None:
        """Let the caller's sipp go past its next wait()."""
        trigger((CALLER_IP, self.uac_port), self.call_id, self.caller_trigger)

    def finish(self, timeout: float = 60) -> None:
        try:
            for name, process in (("caller", self.uac), ("callee", self.uas)):
                try:
                    _, error = process.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    _, error = process.communicate()
                assert process.returncode == 0, f"sipp {name} of {self.name} failed: {error.decode()[-2000:]}{self.stack.context()}"
        finally:
            self.release()

    def release(self) -> None:
        """Stop whatever is left of the call, so a failed flow does not hold ports the next one needs."""
        for process in (self.uac, self.uas):
            if process.poll() is None:
                process.kill()
                process.wait()
        for endpoint in (*self.caller_sockets, *self.callee_sockets, self.caller_trigger):
            endpoint.close()

    def record(self) -> dict:
        wait_until(lambda: self.call_id in self.stack.records(), f"the accounting record of {self.name}", timeout=30)
        return self.stack.records()[self.call_id]


def _address(text: str) -> tuple[str, int]:
    ip, port = text.rsplit(":", 1)
    return ip, int(port)


def _rtp(sequence: int, payload_type: int) -> bytes:
    return bytes([0x80, payload_type]) + sequence.to_bytes(2, "big") + b"\x00" * 8 + bytes([sequence % 256]) * 160


def audio_ports(slot: int = 0) -> tuple[int, int]:
    return AUDIO[0] + 10 * slot, AUDIO[1] + 10 * slot


def callee_user(slot: int = 0, prefix: str = "bob") -> str:
    """Kamailio sends the call to the callee's sipp on the port named at the end of the user."""
    return f"{prefix}-{5060 + 2 * slot}"


def plain_call(stack: Stack, name: str, slot: int = 0, style: str = "engage") -> Call:
    user = callee_user(slot, "manual-bob" if style == "manual" else "bob")
    caller = Caller(user=user, contact_user="manual-alice" if style == "manual" else "alice")
    callee = Callee(contact_user="manual-bob" if style == "manual" else "bob")
    audio = audio_ports(slot)
    return Call(
        stack,
        name,
        [*caller.invite(sdp(CALLER_IP, ("audio", audio[0]))), *caller.answered(), *caller.ack(), *wait(), *caller.bye()],
        [*callee.answer(sdp(CALLEE_IP, ("audio", audio[1]))), *callee.hangup()],
        media=(audio,),
        slot=slot,
    )


def media_stops(stack: Stack, name: str, caller: Caller, callee: Callee) -> tuple[Call, dict]:
    """A call whose media stops after 20 packets each way: the kernel entry times out, the relay
    reports expiry and the dispatcher has Kamailio send BYEs to both ends. The call and its
    record, which says it timed out after the relay's idle timeout."""
    call = Call(
        stack,
        name,
        [*caller.invite(sdp(CALLER_IP, ("audio", AUDIO[0]))), *caller.answered(), *caller.ack(), *recv_bye(answer_after_ms=500)],
        [*callee.answer(sdp(CALLEE_IP, ("audio", AUDIO[1]))), *recv_bye(answer_after_ms=500)],
    )
    call.media(packets=20)
    call.finish(timeout=90)
    record = call.record()
    assert record["timed_out"] is True
    assert record["streams"][0]["timeout_wait"] == IDLE_TIMEOUT
    return call, record


def check_stream(record: dict, packets: int, status: str = "closed", swapped: bool = False) -> dict:
    """``swapped``: the callee made the first offer, so the record has the parties the other way round."""
    stream = record["streams"][0]
    caller, callee = ("callee", "caller") if swapped else ("caller", "callee")
    assert stream["status"] == status
    assert (stream[f"{caller}_codec"], stream[f"{callee}_codec"]) == ("G711u", "G711a")
    assert stream[f"{caller}_remote"] == f"{NAT_PUBLIC}:{AUDIO[0]}"  # the NAT's mapping, learnt from the packets
    assert stream[f"{callee}_remote"] == f"{CALLEE_IP}:{AUDIO[1]}"
    assert stream["caller_packets"] >= packets and stream["callee_packets"] >= packets
    return stream


@pytest.mark.parametrize("style", ["engage", "manual"])
def test_plain_call_media_flows_through_the_relay(stack, style):
    call = plain_call(stack, f"plain-{style}", style=style)
    caller_side, _ = call.media(packets=30)
    assert caller_side.split(":")[0] in RELAYS
    call.next()
    call.finish()
    record = call.record()
    assert record["timed_out"] is False and "alice@example.com" in record["from_uri"]
    assert (record["caller_ua"], record["callee_ua"]) == ("sipp caller", "sipp callee")
    check_stream(record, 30)
    assert (record["dialog_id"] is not None) == (style == "engage")


def test_video_rejected_in_the_answer(stack):
    caller, callee = Caller(user=callee_user()), Callee()
    offer = sdp(CALLER_IP, ("audio", AUDIO[0]), ("video", VIDEO[0]))
    answer = sdp(CALLEE_IP, ("audio", AUDIO[1]), ("video", 0))
    call = Call(
        stack,
        "video-rejected",
        [*caller.invite(offer), *caller.answered(), *caller.ack(), *wait(), *caller.bye()],
        [*callee.answer(answer), *callee.hangup()],
        media=(AUDIO, VIDEO),
    )
    call.media(packets=10)
    call.next()
    call.finish()
    record = call.record()
    audio, video = record["streams"]
    assert (audio["media_type"], audio["status"]) == ("audio", "closed")
    assert (video["media_type"], video["status"], video["caller_packets"]) == ("video", "rejected", 0)


def test_hold_and_unhold_in_both_styles(stack):
    caller, callee = Caller(user=callee_user()), Callee()
    active = sdp(CALLER_IP, ("audio", AUDIO[0]))
    call = Call(
        stack,
        "hold",
        [
            *caller.invite(active),
            *caller.answered(),
            *caller.ack(),
            *wait(),
            *caller.reinvite(sdp(CALLER_IP, ("audio", AUDIO[0], "sendonly"))),
            *wait(),
            *caller.reinvite(active),
            *wait(),
            *caller.reinvite(sdp("0.0.0.0", ("audio", AUDIO[0]))),
            *wait(),
            *caller.reinvite(active),
            *wait(),
            *caller.bye(),
        ],
        [
            *callee.answer(sdp(CALLEE_IP, ("audio", AUDIO[1]))),
            *callee.reanswer(sdp(CALLEE_IP, ("audio", AUDIO[1], "recvonly"))),
            *callee.reanswer(sdp(CALLEE_IP, ("audio", AUDIO[1]))),
            *callee.reanswer(sdp(CALLEE_IP, ("audio", AUDIO[1]))),
            *callee.reanswer(sdp(CALLEE_IP, ("audio", AUDIO[1]))),
            *callee.hangup(),
        ],
    )
    call.media(packets=10)
    call.caller_passed("CSeq: 1 ACK")
    for cseq, held in enumerate((True, False, True, False), start=2):
        call.next()
        expected = "on hold" if held else "active"
        session = call.session(lambda s, expected=expected: s["streams"][-1]["status"] == expected, f"status {expected}")
        # the relay applies a re-INVITE's offer when it passes: the caller's sipp must also have
        # had the 200 and sent its ACK before the next trigger, which it would take as unexpected
        call.caller_passed(f"CSeq: {cseq} ACK")
        if not held:
            call.media(packets=5, session=session)
    call.next()
    call.finish()
    assert call.record()["streams"][-1]["status"] == "closed"


def test_late_offer_in_the_200_and_answer_in_the_ack(stack):
    caller, callee = Caller(user=callee_user()), Callee()
    call = Call(
        stack,
        "late-offer",
        [*caller.invite(None), *caller.answered(), *caller.ack(sdp(CALLER_IP, ("audio", AUDIO[0]))), *wait(), *caller.bye()],
        [*callee.answer(sdp(CALLEE_IP, ("audio", AUDIO[1]))), *callee.hangup()],
    )
    call.media(packets=10)
    call.next()
    call.finish()
    check_stream(call.record(), 10)


def test_ice_offer_gets_a_relay_candidate(stack):
    """With ice_candidate set, Kamailio adds the relay as an ICE candidate to the SDP both sides get."""
    caller, callee = Caller(user=callee_user()), Callee()
    relay_candidate = r"a=candidate:[^\r\n]* 203\.0\.113\.[12] [0-9]+ typ relay"
    call = Call(
        stack,
        "ice",
        [*caller.invite(sdp(CALLER_IP, ("audio", AUDIO[0]), ice=True)), *caller.answered(check=relay_candidate), *caller.ack()]
        + [*wait(), *caller.bye()],
        [*callee.answer(sdp(CALLEE_IP, ("audio", AUDIO[1]), ice=True), check=relay_candidate), *callee.hangup()],
    )
    call.media(packets=10)
    call.next()
    call.finish()
    check_stream(call.record(), 10)


def test_media_that_stops_ends_the_dialog_through_kamailio(stack):
    _, record = media_stops(stack, "media-stops", Caller(user=callee_user()), Callee())
    check_stream(record, 20, status="conntrack timeout")
    dispatcher = stack.deployment.dispatcher
    dispatcher.wait_for_log("The proxy ended dialog")


def test_a_killed_relay_is_avoided_and_a_draining_one_finishes_its_calls(stack):
    # a relay that dies: new calls go to the other one
    victim = RELAYS[0]
    stack.relays[victim].process.kill()
    stack.relays[victim].process.wait()
    stack.deployment.dispatcher.wait_for_log(f"Relay {victim} disconnected", timeout=15)
    for attempt in range(2):
        call = plain_call(stack, f"after-kill-{attempt}")
        caller_side, _ = call.media(packets=5)
        assert caller_side.startswith(RELAYS[1]), caller_side
        call.next()
        call.finish()
    stack.start_relay(victim, 1)

    # SIGHUP: the relay with a call in progress drains; new calls go elsewhere; the call goes on
    busy = plain_call(stack, "draining")
    caller_side, _ = busy.media(packets=5)
    draining_ip = caller_side.split(":")[0]
    other = RELAYS[1] if draining_ip == RELAYS[0] else RELAYS[0]
    draining = stack.relays[draining_ip]
    draining.process.send_signal(signal.SIGHUP)
    draining.wait_for_log("Graceful shutdown")
    newcomer = plain_call(stack, "while-draining", slot=1)
    newcomer_side, _ = newcomer.media(packets=5)
    assert newcomer_side.startswith(other)
    busy.media(packets=5)
    busy.next()
    busy.finish()
    assert draining.process.wait(timeout=15) == 0
    newcomer.next()
    newcomer.finish()
    stack.start_relay(draining_ip, RELAYS.index(draining_ip) + 1)


def test_callee_reinvite_keeps_the_media_going(stack):
    caller, callee = Caller(user=callee_user()), Callee()
    offer, answer = sdp(CALLER_IP, ("audio", AUDIO[0])), sdp(CALLEE_IP, ("audio", AUDIO[1]))
    call = Call(
        stack,
        "callee-reinvite",
        [*caller.invite(offer), *caller.answered(), *caller.ack(), *caller.reanswer(offer, check=RELAY_IN_SDP), *wait(), *caller.bye()],
        [*callee.answer(answer), *callee.reinvite(answer), *callee.hangup()],
    )
    # the caller's sipp checks that the callee's re-INVITE reaches it with the relay in the SDP
    call.media(packets=10)
    call.caller_passed("CSeq: 1 ACK", direction="received")  # the callee's ACK of its re-INVITE: the caller waits now
    call.next()
    call.finish()
    record = call.record()
    check_stream(record, 10)
    assert len(record["streams"]) == 1


def test_200_without_sdp_after_183_with_sdp(stack):
    """The 183's SDP is the answer: early media flows and the call counts from it."""
    caller, callee = Caller(user=callee_user()), Callee()
    call = Call(
        stack,
        "200-without-sdp",
        [*caller.invite(sdp(CALLER_IP, ("audio", AUDIO[0]))), *caller.answered(early=True), *caller.ack(), *wait(), *caller.bye()],
        [*callee.answer(None, early=sdp(CALLEE_IP, ("audio", AUDIO[1]))), *callee.hangup()],
    )
    call.media(packets=10)  # from the 183's answer: the 200 may not have reached the caller yet
    call.caller_passed("CSeq: 1 ACK")
    call.next()
    call.finish()
    record = call.record()
    assert record["start_time"] is not None
    check_stream(record, 10)


def test_cancel_after_183_with_sdp(stack):
    """Early media, then the caller gives up: the relay session goes and the call is accounted."""
    caller, callee = Caller(user=callee_user()), Callee()
    steps = [*caller.invite(sdp(CALLER_IP, ("audio", AUDIO[0]))), _early(), *wait()]
    steps += caller.cancel(invite_offset=elements(steps))
    call = Call(stack, "cancel-after-183", steps, [*callee.ring(early=sdp(CALLEE_IP, ("audio", AUDIO[1]))), *callee.cancelled()])
    call.media(packets=10)
    call.next()
    call.finish()
    wait_until(lambda: all(session["call_id"] != call.call_id for session in stack.sessions()), "the relay session to go")
    record = call.record()
    check_stream(record, 10)


def elements(steps: list[str]) -> int:
    """How many scenario messages the steps hold (sipp numbers them; a CANCEL reuses the INVITE's branch)."""
    text = "".join(steps)
    return text.count("<send") + text.count("<recv")


def _early() -> str:
    return '  <recv response="100" optional="true"/>\n  <recv response="180" optional="true"/>\n  <recv response="183"/>\n'

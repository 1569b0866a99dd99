"""A real Kamailio (Debian package) and sipp: media that never flows makes the relay expire the
call, and the dispatcher has Kamailio end the dialog over jsonrpcs, which BYEs both endpoints; an
operator's terminate does the same."""

import io
import os
import re
import shutil
import subprocess
import time

import pytest

from harness import Program, free_port
from mediaproxy.cli import sessions as sessions_cli
from mediaproxy.net import certgen

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"


def require(program, package):
    if shutil.which(program) is None:
        pytest.fail(f"{program} is missing: install the Debian package {package} (apt-get install {package})")


@pytest.fixture
def kamailio_stack(tmp_path):
    yield from _kamailio_stack(tmp_path, stream_timeout=2)


@pytest.fixture
def patient_kamailio_stack(tmp_path):
    """Media may stop for a minute before the call expires: what ends it is up to the test."""
    yield from _kamailio_stack(tmp_path, stream_timeout=60)


def _kamailio_stack(tmp_path, stream_timeout):
    require("kamailio", "kamailio")
    require("sipp", "sip-tester")
    config, runtime = tmp_path / "config", tmp_path / "run"
    certgen.generate(str(config / "tls"))
    relay_port, management_port = free_port(), free_port()
    rpc_socket = tmp_path / "kamailio_rpc.sock"
    (config / "config.ini").write_text(
        f"""
[Dispatcher]
listen = 127.0.0.1:{relay_port}
listen_management = 127.0.0.1:{management_port}
management_use_tls = no
[Relay]
dispatchers = 127.0.0.1:{relay_port}
relay_ip = 127.0.0.1
port_range = 44000:44400
stream_timeout = {stream_timeout}
forwarding = userspace
[OpenSIPS]
socket_path = {rpc_socket}
flavour = kamailio
"""
    )
    processes = []
    dispatcher = Program("media-dispatcher", str(config), str(runtime), str(tmp_path / "dispatcher.log"))
    processes.append(dispatcher)
    dispatcher.wait_for_log("Dispatcher started")
    relay = Program("media-relay", str(config), str(runtime), str(tmp_path / "relay.log"))
    processes.append(relay)
    dispatcher.wait_for_log("Relay 127.0.0.1 connected")
    sip_port, uas_port, uac_port = free_port(), free_port(), free_port()
    template = open(os.path.join(HERE, "sip", "kamailio.cfg.in")).read()
    replacements = {
        "@SIP_PORT@": sip_port,
        "@UAS_PORT@": uas_port,
        "@MODULES@": MODULES,
        "@RPC_SOCKET@": rpc_socket,
        "@DISPATCHER_SOCKET@": runtime / "dispatcher.sock",
    }
    for marker, value in replacements.items():
        template = template.replace(marker, str(value))
    (tmp_path / "kamailio.cfg").write_text(template)
    kamailio_log = open(tmp_path / "kamailio.log", "w")
    kamailio_runtime = tmp_path / "kamailio-run"
    kamailio_runtime.mkdir()
    kamailio = subprocess.Popen(
        ["kamailio", "-f", str(tmp_path / "kamailio.cfg"), "-DD", "-E", "-Y", str(kamailio_runtime), "-m", "64", "-M", "8"],
        stdout=kamailio_log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while not rpc_socket.exists():
        if kamailio.poll() is not None or time.monotonic() > deadline:
            kamailio_log.flush()
            pytest.fail("Kamailio did not start:\n" + (tmp_path / "kamailio.log").read_text()[-3000:])
        time.sleep(0.05)
    try:
        yield {
            "sip_port": sip_port,
            "uas_port": uas_port,
            "uac_port": uac_port,
            "dispatcher": dispatcher,
            "relay": relay,
            "log": tmp_path / "kamailio.log",
            "tmp": tmp_path,
            "management_port": management_port,
        }
    finally:
        kamailio.terminate()
        kamailio.wait(timeout=10)
        kamailio_log.close()
        for program in processes:
            if program.process.poll() is None:
                program.process.kill()
                program.process.wait()


def sipp(scenario, port, *extra, tmp, calls=1, timeout=12):
    return subprocess.Popen(
        [
            "sipp",
            "-sf",
            os.path.join(HERE, "sip", scenario),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            str(calls),
            "-nostdin",
            "-timeout",
            f"{timeout}s",
            "-timeout_error",
            "-trace_msg",
            "-trace_err",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp,
    )


def test_expired_media_makes_kamailio_end_the_dialog(kamailio_stack):
    stack = kamailio_stack
    uas = sipp("uas-bye-from-proxy.xml", stack["uas_port"], tmp=stack["tmp"])
    uac = sipp("uac-bye-from-proxy.xml", stack["uac_port"], f"127.0.0.1:{stack['sip_port']}", "-s", "bob", tmp=stack["tmp"])
    uac_error = uac.communicate(timeout=40)[1]
    uas_error = uas.communicate(timeout=40)[1]
    kamailio_log = stack["log"].read_text()
    context = f"\nkamailio:\n{kamailio_log[-3000:]}\ndispatcher:\n{stack['dispatcher'].output()[-3000:]}\nrelay:\n{stack['relay'].output()[-2000:]}"
    assert uac.returncode == 0, uac_error.decode() + context
    assert uas.returncode == 0, uas_error.decode() + context
    dispatcher_log = stack["dispatcher"].output()
    assert "expired on relay 127.0.0.1" in dispatcher_log, context
    assert "The proxy ended dialog" in dispatcher_log, context
    # Kamailio's module then removes the call; the dispatcher answers it without asking the relay
    stack["dispatcher"].wait_for_log("removed after its dialog was ended")
    assert "Session" in stack["relay"].output() and "expired" in stack["relay"].output()


def test_fifty_expired_calls_each_end_with_both_byes(kamailio_stack):
    """Media stops in 50 calls set up 10 a second: Kamailio's dlg.end_dlg sends both BYEs of every
    dialog (a remove answered only after a relay round trip used to lose the callee's BYE)."""
    stack = kamailio_stack
    before = stack["dispatcher"].output().count("The proxy ended dialog")
    uas = sipp("uas-bye-from-proxy.xml", stack["uas_port"], tmp=stack["tmp"], calls=50, timeout=60)
    uac = sipp(
        "uac-bye-from-proxy.xml",
        stack["uac_port"],
        f"127.0.0.1:{stack['sip_port']}",
        "-s",
        "bob",
        "-r",
        "10",
        tmp=stack["tmp"],
        calls=50,
        timeout=60,
    )
    uac_error = uac.communicate(timeout=90)[1]
    uas_error = uas.communicate(timeout=90)[1]
    context = f"\nkamailio:\n{stack['log'].read_text()[-3000:]}\ndispatcher:\n{stack['dispatcher'].output()[-3000:]}"
    # sipp exits 0 only when every call got its BYE: the caller's from the proxy, the callee's too
    assert uac.returncode == 0, uac_error.decode() + context
    assert uas.returncode == 0, uas_error.decode() + context
    assert stack["dispatcher"].output().count("The proxy ended dialog") - before == 50, context
    assert "terminating non-confirmed dialogs not supported" not in stack["log"].read_text()


def test_terminate_ends_a_call_through_kamailio(patient_kamailio_stack):
    """media-sessions terminate: the dispatcher has Kamailio end the dialog, which BYEs both parties."""
    stack = patient_kamailio_stack
    uas = sipp("uas-bye-from-proxy.xml", stack["uas_port"], tmp=stack["tmp"], timeout=30)
    uac = sipp("uac-bye-from-proxy.xml", stack["uac_port"], f"127.0.0.1:{stack['sip_port']}", "-s", "bob", tmp=stack["tmp"], timeout=30)
    try:
        stack["dispatcher"].wait_for_log("answered (relay 127.0.0.1)")
        (call_id,) = re.findall(r"Call (\S+) answered \(relay", stack["dispatcher"].output())
        shown = io.StringIO()
        assert sessions_cli.main(["terminate", call_id, "--no-tls", "--port", str(stack["management_port"])], shown) == 0
        assert shown.getvalue() == f"call {call_id}: dialog ended through the proxy\n"
        uac_error = uac.communicate(timeout=40)[1]
        uas_error = uas.communicate(timeout=40)[1]
    finally:
        for process in (uac, uas):
            if process.poll() is None:
                process.kill()
                process.wait()
    context = f"\nkamailio:\n{stack['log'].read_text()[-3000:]}\ndispatcher:\n{stack['dispatcher'].output()[-3000:]}"
    # sipp exits 0 only when both parties got their BYE
    assert uac.returncode == 0, uac_error.decode() + context
    assert uas.returncode == 0, uas_error.decode() + context
    dispatcher_log = stack["dispatcher"].output()
    assert f"Call {call_id} terminated by the operator" in dispatcher_log and "The proxy ended dialog" in dispatcher_log, context
    assert "expired on relay" not in dispatcher_log  # the media timeout had nothing to do with it
    # Kamailio's module then removes the call, which ends as any call ended by a BYE
    stack["dispatcher"].wait_for_log(f"Call {call_id} ended (bye)")

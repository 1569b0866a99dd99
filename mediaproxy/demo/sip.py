"""The demo call placed for real: sipp calls sipp through Kamailio's mediaproxy module on loopback.

Used by ``mediaproxy-demo`` when Kamailio (with its mediaproxy module) and sipp are installed.
The SDP of both sipp scenarios names the demo's own RTP sockets, so the packets the demo sends
are the ones Kamailio's rewritten SDP points through the relay.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable

KAMAILIO_CFG = """\
#!KAMAILIO
# written by mediaproxy-demo
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:{sip_port}
auto_aliases=no
mpath="{modules}"
loadmodule "kex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "dialog.so"
loadmodule "mediaproxy.so"
modparam("mediaproxy", "mediaproxy_socket", "{dispatcher_socket}")
modparam("rr", "append_fromtag", 1)

request_route {{
    if (has_totag()) {{
        if (loose_route() || (is_method("ACK") && t_check_trans())) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("INVITE")) {{
        record_route();
        engage_media_proxy();
        dlg_manage();
    }}
    $du = "sip:127.0.0.1:{callee_port}";
    t_relay();
}}
"""

SDP = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio {port} RTP/AVP 0 8\na=rtpmap:0 PCMU/8000\na=rtpmap:8 PCMA/8000\n"

CALLER = """\
<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="mediaproxy demo caller">
  <send retrans="500"><![CDATA[
INVITE sip:bob@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice" <sip:alice@example.com>;tag=[pid]demo[call_number]
To: <sip:bob@example.com>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:alice@[local_ip]:[local_port]>
Max-Forwards: 70
User-Agent: mediaproxy-demo caller (sipp)
Content-Type: application/sdp
Content-Length: [len]

{sdp}
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: "Alice" <sip:alice@example.com>;tag=[pid]demo[call_number]
To: <sip:bob@example.com>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="{talk_ms}"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: "Alice" <sip:alice@example.com>;tag=[pid]demo[call_number]
To: <sip:bob@example.com>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""

CALLEE = """\
<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="mediaproxy demo callee">
  <recv request="INVITE" rrs="true"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]demo[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:bob@[local_ip]:[local_port]>
User-Agent: mediaproxy-demo callee (sipp)
Content-Type: application/sdp
Content-Length: [len]

{sdp}
]]></send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""


def modules_directory() -> str | None:
    for directory in (*glob.glob("/usr/lib/*/kamailio/modules"), "/usr/lib/kamailio/modules", "/usr/local/lib64/kamailio/modules"):
        if os.path.exists(os.path.join(directory, "mediaproxy.so")):
            return directory
    return None


def available() -> bool:
    return shutil.which("kamailio") is not None and shutil.which("sipp") is not None and modules_directory() is not None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {what}")
        time.sleep(0.1)


def _write_scenario(sip: str, sip_port: int, callee_port: int, dispatcher_socket: str, caller, callee, seconds: float) -> None:
    """Kamailio's configuration and the two sipp scenarios, into ``sip``."""
    files = {
        "kamailio.cfg": KAMAILIO_CFG.format(
            sip_port=sip_port, modules=modules_directory(), dispatcher_socket=dispatcher_socket, callee_port=callee_port
        ),
        "caller.xml": CALLER.format(sdp=SDP.format(port=caller.getsockname()[1]), talk_ms=int((seconds + 3) * 1000)),
        "callee.xml": CALLEE.format(sdp=SDP.format(port=callee.getsockname()[1])),
    }
    for name, text in files.items():
        with open(os.path.join(sip, name), "w") as file:
            file.write(text)


def _answered(sessions: list, found: dict) -> bool:
    """Whether sipp's call is up on the relay; its session goes into ``found``."""
    for session in sessions:
        if session["start_time"] is not None and session["streams"] and "sipp" in session["caller_ua"]:
            found.update(session)
            return True
    return False


def call(
    directory: str, dispatcher_socket: str, sessions: Callable[[], list], seconds: float, endpoints, talk, user: str | None = None
) -> dict:
    """Place the call, let the demo's RTP sockets talk through the relay, hang up; the call's statistics.

    With ``user``, Kamailio runs as that user (with its groups), as the Debian package runs it.
    """
    if not available():
        raise SystemExit("demo: Kamailio (with its mediaproxy module) and sipp are needed: apt-get install kamailio sip-tester")
    caller, callee = endpoints()
    sip_port, callee_port, caller_port = _free_udp_port(), _free_udp_port(), _free_udp_port()
    sip = os.path.join(directory, "sip")
    os.makedirs(os.path.join(sip, "kamailio-run"), exist_ok=True)
    _write_scenario(sip, sip_port, callee_port, dispatcher_socket, caller, callee, seconds)
    processes = []

    def start(command: list[str], log_name: str) -> subprocess.Popen:
        with open(os.path.join(sip, log_name), "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=sip)
        processes.append(process)
        return process

    as_user = []
    if user is not None:
        shutil.chown(os.path.join(sip, "kamailio-run"), user)
        as_user = ["-u", user, "-g", user]
    try:
        kamailio = start(
            ["kamailio", "-f", "kamailio.cfg", "-DD", "-E", "-Y", "kamailio-run", "-m", "32", "-M", "4", *as_user], "kamailio.log"
        )
        _wait(lambda: "Listening on" in _read(sip, "kamailio.log") or kamailio.poll() is not None, "Kamailio did not start", 15)
        if kamailio.poll() is not None:
            raise SystemExit("demo: Kamailio did not start:\n" + _read(sip, "kamailio.log")[-2000:])
        print(f"Kamailio listening on 127.0.0.1:{sip_port} (log {sip}/kamailio.log)")
        common = ["-m", "1", "-nostdin", "-timeout", f"{int(seconds) + 30}s", "-timeout_error", "-i", "127.0.0.1"]
        callee_sipp = start(["sipp", "-sf", "callee.xml", "-p", str(callee_port), *common], "sipp-callee.log")
        caller_sipp = start(["sipp", "-sf", "caller.xml", "-p", str(caller_port), *common, f"127.0.0.1:{sip_port}"], "sipp-caller.log")
        found: dict = {}
        _wait(lambda: _answered(sessions(), found), "the SIP call was not answered through the relay (see the logs in " + sip + ")", 15)
        stream = found["streams"][0]
        print(f"sipp's INVITE and 200 OK were rewritten by Kamailio to the relay: {stream['callee_local']} / {stream['caller_local']}")
        caller_side = stream["caller_local"].rsplit(":", 1)
        callee_side = stream["callee_local"].rsplit(":", 1)
        talk(caller, callee, (caller_side[0], int(caller_side[1])), (callee_side[0], int(callee_side[1])), seconds)
        statistics = next((session for session in sessions() if session["call_id"] == found["call_id"]), found)
        for process, name in ((caller_sipp, "caller"), (callee_sipp, "callee")):
            if process.wait(timeout=seconds + 40) != 0:
                raise SystemExit(f"demo: sipp {name} failed (see {sip}/sipp-{name}.log)")
        print("sipp hung up; Kamailio told the dispatcher to remove the call")
        return statistics
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        caller.close()
        callee.close()


def _read(directory: str, name: str) -> str:
    try:
        with open(os.path.join(directory, name)) as file:
            return file.read()
    except FileNotFoundError:
        return ""

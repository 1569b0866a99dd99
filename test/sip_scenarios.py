"""sipp scenarios for the end-to-end suite, written as short lists of steps.

Calls pause at ``wait()`` until the test sends the endpoint an OPTIONS request with the call's
Call-ID (``trigger``); that lets the test do media, check the relay and move the call on without
timed pauses.
"""

from __future__ import annotations

import socket
import uuid

UAC_TAG = "[pid]SIPpTag00[call_number]"
UAS_TAG = "[pid]SIPpTag01[call_number]"


def sdp(ip: str, *media: tuple, ice: bool = False) -> str:
    """SDP with one m= line per (kind, port[, direction]); ``ip`` 0.0.0.0 puts the call on hold."""
    lines = ["v=0", f"o=- 1000 1000 IN IP4 {ip}", "s=-", f"c=IN IP4 {ip}", "t=0 0"]
    if ice:
        lines += ["a=ice-ufrag:Mp7e", "a=ice-pwd:mediaproxyTestPassword1"]
    for item in media:
        kind, port, direction = (*item, "sendrecv")[:3]
        payload = "0" if kind == "audio" else "96"
        lines.append(f"m={kind} {port} RTP/AVP {payload}")
        lines.append("a=rtpmap:0 PCMU/8000" if kind == "audio" else "a=rtpmap:96 H264/90000")
        lines.append(f"a={direction}")
        if ice:
            lines.append(f"a=candidate:1 1 UDP 2130706431 {ip} {port} typ host")
    return "\n".join(lines) + "\n"


def _message(first_line: str, headers: list[str], body: str | None) -> str:
    content = ["Content-Type: application/sdp", "Content-Length: [len]", "", body.rstrip("\n")] if body else ["Content-Length: 0", ""]
    return "\n".join([first_line, *headers, *content]) + "\n"


def _send(message: str, retrans: bool = False) -> str:
    attribute = ' retrans="500"' if retrans else ""
    return f"  <send{attribute}>\n    <![CDATA[\n{message}\n    ]]>\n  </send>\n"


def _recv(what: str, optional: bool = False, rrs: bool = False, check: str | None = None, capture_from: bool = False) -> str:
    kind = "response" if what.isdigit() else "request"
    attributes = f'{kind}="{what}"' + (' optional="true"' if optional else "") + (' rrs="true"' if rrs else "")
    actions = []
    if check is not None:
        actions.append(f'<ereg regexp="{check}" search_in="body" check_it="true" assign_to="found"/>')
    if capture_from:  # the caller's From (tag included) and Contact, for the callee's own requests
        actions.append('<ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/>')
        actions.append('<ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" assign_to="caller_contact"/>')
    if not actions:
        return f"  <recv {attributes}/>\n"
    return f"  <recv {attributes}><action>{''.join(actions)}</action></recv>\n"


def scenario(name: str, steps: list[str]) -> str:
    body = "".join(steps)
    for variable in ("found", "caller", "caller_contact"):
        if f'assign_to="{variable}"' in body and f"[${variable}]" not in body:
            body += f'  <Reference variables="{variable}"/>\n'  # sipp refuses variables it thinks unused
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="{name}">\n{body}</scenario>\n'


class Caller:
    """Steps of the calling side (sipp -sf as UAC), talking to the proxy at [remote_ip]:[remote_port]."""

    def __init__(self, user: str = "bob", contact_user: str = "alice", agent: str = "sipp caller") -> None:
        self.user, self.contact_user, self.agent = user, contact_user, agent
        self.cseq = 0

    def _headers(self, method: str, in_dialog: bool) -> list[str]:
        to = "To: <sip:{user}@example.com>[peer_tag_param]" if in_dialog else "To: <sip:{user}@example.com>"
        headers = [
            "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
            f'From: "Alice" <sip:alice@example.com>;tag={UAC_TAG}',
            to.format(user=self.user),
            "Call-ID: [call_id]",
            f"CSeq: {self.cseq} {method}",
            f"Contact: <sip:{self.contact_user}@[local_ip]:[local_port]>",
            "Max-Forwards: 70",
            f"User-Agent: {self.agent}",
        ]
        if in_dialog:
            headers.insert(1, "[routes]")
        return headers

    def invite(self, body: str | None) -> list[str]:
        self.cseq += 1
        first = f"INVITE sip:{self.user}@[remote_ip]:[remote_port] SIP/2.0"
        return [_send(_message(first, self._headers("INVITE", False), body), retrans=True)]

    def answered(self, early: bool = False, check: str | None = None) -> list[str]:
        steps = [_recv("100", optional=True), _recv("180", optional=True)]
        if early:
            steps.append(_recv("183", check=check))
            check = None
        steps.append(_recv("200", rrs=True, check=check))
        return steps

    def ack(self, body: str | None = None) -> list[str]:
        headers = self._headers("ACK", True)
        return [_send(_message("ACK [next_url] SIP/2.0", headers, body))]

    def reinvite(self, body: str | None) -> list[str]:
        self.cseq += 1
        return [
            _send(_message("INVITE [next_url] SIP/2.0", self._headers("INVITE", True), body), retrans=True),
            _recv("100", optional=True),
            _recv("200"),
            *self.ack(),
        ]

    def bye(self) -> list[str]:
        self.cseq += 1
        return [_send(_message("BYE [next_url] SIP/2.0", self._headers("BYE", True), None), retrans=True), _recv("200")]

    def cancel(self, invite_offset: int) -> list[str]:
        """CANCEL the INVITE sent ``invite_offset`` scenario elements before, then take its 487."""
        headers = self._headers("CANCEL", False)
        headers[0] = f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-{invite_offset}]"
        cancel = _send(_message(f"CANCEL sip:{self.user}@[remote_ip]:[remote_port] SIP/2.0", headers, None))
        ack = self._headers("ACK", False)
        ack[0] = f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-{invite_offset + 3}]"
        ack[2] = "[last_To:]"
        return [cancel, _recv("200"), _recv("487"), _send(_message(f"ACK sip:{self.user}@[remote_ip]:[remote_port] SIP/2.0", ack, None))]

    def reanswer(self, body: str | None, check: str | None = None) -> list[str]:
        """Answer a re-INVITE from the other side."""
        headers = ["[last_Via:]", "[last_From:]", "[last_To:]", "[last_Call-ID:]", "[last_CSeq:]", "[last_Record-Route:]"]
        headers += [f"Contact: <sip:{self.contact_user}@[local_ip]:[local_port]>", f"User-Agent: {self.agent}"]
        return [_recv("INVITE", check=check), _send(_message("SIP/2.0 200 OK", headers, body)), _recv("ACK")]


class Callee:
    """Steps of the called side (sipp -sf as UAS)."""

    def __init__(self, contact_user: str = "bob", agent: str = "sipp callee") -> None:
        self.contact_user, self.agent = contact_user, agent

    def _reply(self, code: str, body: str | None = None) -> str:
        headers = [
            "[last_Via:]",
            "[last_From:]",
            f"[last_To:];tag={UAS_TAG}",
            "[last_Call-ID:]",
            "[last_CSeq:]",
            "[last_Record-Route:]",
            f"Contact: <sip:{self.contact_user}@[local_ip]:[local_port]>",
            f"User-Agent: {self.agent}",
        ]
        return _send(_message(f"SIP/2.0 {code}", headers, body))

    def answer(self, body: str | None, early: str | None = None, check: str | None = None) -> list[str]:
        steps = [*self.ring(early, check), self._reply("200 OK", body), _recv("ACK")]
        return steps

    def ring(self, early: str | None = None, check: str | None = None) -> list[str]:
        steps = [_recv("INVITE", rrs=True, check=check, capture_from=True), self._reply("180 Ringing")]
        if early is not None:
            steps.append(self._reply("183 Session Progress", early))
        return steps

    def cancelled(self, invite_cseq: int = 1) -> list[str]:
        """Take a CANCEL: 200 for it, then 487 for the INVITE (same branch, the INVITE's CSeq), then its ACK."""
        ok = _message("SIP/2.0 200 OK", ["[last_Via:]", "[last_From:]", "[last_To:]", "[last_Call-ID:]", "[last_CSeq:]"], None)
        terminated = self._reply("487 Request Terminated").replace("[last_CSeq:]", f"CSeq: {invite_cseq} INVITE")
        return [_recv("CANCEL"), _send(ok), terminated, _recv("ACK")]

    def reinvite(self, body: str | None, cseq: int = 1) -> list[str]:
        """The callee's own in-dialog INVITE (its CSeq space starts at 1)."""
        headers = [
            "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
            "[routes]",
            f"From: <sip:bob@example.com>;tag={UAS_TAG}",
            "To:[$caller]",
            "Call-ID: [call_id]",
            f"CSeq: {cseq} INVITE",
            f"Contact: <sip:{self.contact_user}@[local_ip]:[local_port]>",
            "Max-Forwards: 70",
            f"User-Agent: {self.agent}",
        ]
        ack = [line.replace(f"CSeq: {cseq} INVITE", f"CSeq: {cseq} ACK") for line in headers]
        return [
            # not [next_url]: the test's OPTIONS trigger was the last message sipp saw
            _send(_message("INVITE [$caller_contact] SIP/2.0", headers, body), retrans=True),
            _recv("100", optional=True),
            _recv("200"),
            _send(_message("ACK [$caller_contact] SIP/2.0", ack, None)),
        ]

    def reanswer(self, body: str | None) -> list[str]:
        return [_recv("INVITE"), self._reply("200 OK", body), _recv("ACK")]

    def hangup(self) -> list[str]:
        return [_recv("BYE"), self._reply("200 OK")]


def ok_reply() -> str:
    return _send("SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n[last_Call-ID:]\n[last_CSeq:]\nContent-Length: 0\n")


def wait() -> list[str]:
    """Pause the call until the test's OPTIONS arrives (see ``trigger``)."""
    return [_recv("OPTIONS"), ok_reply()]


def recv_bye(answer_after_ms: int = 0) -> list[str]:
    """Take a BYE from the proxy; ``answer_after_ms`` holds the 200 back for a moment.

    Kamailio's dlg.end_dlg sends the two BYEs one after the other and refuses the second if the
    first leg's 200 has already moved the dialog on; a real phone is never that fast.
    """
    pause = [f'  <pause milliseconds="{answer_after_ms}"/>\n'] if answer_after_ms else []
    return [_recv("BYE"), *pause, ok_reply()]


def trigger(endpoint: tuple[str, int], call_id: str, sender: socket.socket) -> None:
    """Move a waiting sipp call on: an OPTIONS within its Call-ID, sent from a socket in its network.

    sipp answers to the call's peer (the proxy), not to us; the test watches the effect instead.
    """
    host, port = sender.getsockname()
    request = (
        f"OPTIONS sip:test@{endpoint[0]}:{endpoint[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKtrigger{uuid.uuid4().hex[:12]}\r\n"
        f"From: <sip:test@{host}>;tag=trigger\r\nTo: <sip:sipp@{endpoint[0]}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    sender.sendto(request.encode(), endpoint)

"""End to end with Kamailio's rtpproxy module: the same NAT topology, relays and accounting as
``test_e2e``, with the module's control socket pointed at the dispatcher's ``rtpproxy_listen``.

Every flow runs in both script styles: ``rtpproxy_manage()``, and ``rtpproxy_offer()`` /
``rtpproxy_answer()`` / ``unforce_rtp_proxy()`` (calls to ``offer-...`` users). Media is real
RTP from the test's sockets behind the NAT and on the callee's network, through the relay the
module wrote into the SDP; each call's accounting record is read back from SQLite.
"""

from __future__ import annotations

import pytest
from deployment import wait_until
from sip_scenarios import Callee, Caller, sdp, wait
from test_e2e import (
    AUDIO,
    CALLEE_IP,
    CALLER_IP,
    RELAY_IN_SDP,
    RELAYS,
    RTPPROXY_SOCK,
    VIDEO,
    Call,
    Stack,
    _early,
    check_stream,
    elements,
    media_stops,
    network,  # noqa: F401 - the module's namespaces, as a fixture
    released,
    started,
)

STYLES = ["manage", "offer"]


@pytest.fixture(scope="module")
def running_stack(network, tmp_path_factory):  # noqa: F811 - the fixture imported above
    yield from started(
        Stack(network, tmp_path_factory.mktemp("e2e-rtpproxy"), "e2e-rtpproxy.cfg.in", f"rtpproxy_listen = {RTPPROXY_SOCK}\n")
    )


@pytest.fixture
def stack(running_stack):
    yield from released(running_stack)


def parties(style: str) -> tuple[Caller, Callee]:
    """The two ends; an offer-style call is named so by its R-URI and both contacts."""
    prefix = "offer-" if style == "offer" else ""
    return Caller(user=f"{prefix}bob-5060", contact_user=f"{prefix}alice"), Callee(contact_user=f"{prefix}bob")


def check_record(record: dict, packets: int, status: str = "closed", swapped: bool = False) -> dict:
    """The record of an rtpproxy-module call: the module names no URIs or agents, the relay
    learnt the parties' real addresses from their packets."""
    assert (record["from_uri"], record["caller_ua"], record["dialog_id"]) == ("unknown", "unknown", None)
    return check_stream(record, packets, status, swapped)


@pytest.mark.parametrize("style", STYLES)
def test_plain_call(stack, style):
    caller, callee = parties(style)
    call = Call(
        stack,
        f"plain-{style}",
        [*caller.invite(sdp(CALLER_IP, ("audio", AUDIO[0]))), *caller.answered(check=RELAY_IN_SDP), *caller.ack(), *wait()] + caller.bye(),
        [*callee.answer(sdp(CALLEE_IP, ("audio", AUDIO[1])), check=RELAY_IN_SDP), *callee.hangup()],
    )
    caller_side, _ = call.media(packets=30)
    assert caller_side.split(":")[0] in RELAYS
    call.next()
    call.finish()
    record = call.record()
    assert record["timed_out"] is False and record["end_reason"] == "bye"
    check_record(record, 30)
    # the BYE's D removed the call everywhere
    wait_until(lambda: all(session["call_id"] != call.call_id for session in stack.sessions()), "the relay session to go")


@pytest.mark.parametrize("style", STYLES)
def test_audio_and_video_with_the_video_rejected(stack, style):
    caller, callee = parties(style)
    call = Call(
        stack,
        f"video-rejected-{style}",
        [*caller.invite(sdp(CALLER_IP, ("audio", AUDIO[0]), ("video", VIDEO[0]))), *caller.answered(), *caller.ack(), *wait()]
        + caller.bye(),
        [*callee.answer(sdp(CALLEE_IP, ("audio", AUDIO[1]), ("video", 0))), *callee.hangup()],
        media=(AUDIO, VIDEO),
    )
    call.media(packets=10)
    call.next()
    call.finish()
    audio, video = call.record()["streams"]
    assert audio["status"] == "closed" and audio["caller_packets"] >= 10
    # the module does not say which m= line is video: the record has its status, not its kind
    assert (video["status"], video["caller_packets"], video["callee_packets"]) == ("rejected", 0, 0)


@pytest.mark.parametrize("style", STYLES)
def test_hold_and_unhold(stack, style):
    """Both hold styles: the module re-offers (with the SIP source address, even for 0.0.0.0);
    the ports stay, and media flows again after each unhold."""
    caller, callee = parties(style)
    active = sdp(CALLER_IP, ("audio", AUDIO[0]))
    answer = sdp(CALLEE_IP, ("audio", AUDIO[1]))
    call = Call(
        stack,
        f"hold-{style}",
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
            *callee.answer(answer),
            *callee.reanswer(sdp(CALLEE_IP, ("audio", AUDIO[1], "recvonly"))),
            *callee.reanswer(answer),
            *callee.reanswer(answer),
            *callee.reanswer(answer),
            *callee.hangup(),
        ],
    )
    first = call.media(packets=10)
    for cseq, held in ((2, True), (3, False), (4, True), (5, False)):
        call.next()
        call.caller_passed(f"CSeq: {cseq} ACK")
        if not held:
            assert call.media(packets=5) == first
    call.next()
    call.finish()
    record = call.record()
    assert len(record["streams"]) == 1
    check_record(record, 20)


@pytest.mark.parametrize("style", STYLES)
def test_late_offer_in_the_200_and_answer_in_the_ack(stack, style):
    """The callee offers: to the relay the callee is the first offerer."""
    caller, callee = parties(style)
    call = Call(
        stack,
        f"late-offer-{style}",
        [*caller.invite(None), *caller.answered(check=RELAY_IN_SDP), *caller.ack(sdp(CALLER_IP, ("audio", AUDIO[0]))), *wait()]
        + caller.bye(),
        [*callee.answer(sdp(CALLEE_IP, ("audio", AUDIO[1]))), *callee.hangup()],
    )
    call.media(packets=10, swapped=True)
    call.next()
    call.finish()
    check_record(call.record(), 10, swapped=True)


@pytest.mark.parametrize("style", STYLES)
def test_callee_reinvite_keeps_the_media_going(stack, style):
    caller, callee = parties(style)
    offer, answer = sdp(CALLER_IP, ("audio", AUDIO[0])), sdp(CALLEE_IP, ("audio", AUDIO[1]))
    call = Call(
        stack,
        f"callee-reinvite-{style}",
        [*caller.invite(offer), *caller.answered(), *caller.ack(), *caller.reanswer(offer, check=RELAY_IN_SDP), *wait(), *caller.bye()],
        [*callee.answer(answer), *callee.reinvite(answer), *callee.hangup()],
    )
    # the callee re-INVITEs as soon as it has the ACK; the caller's answer is the call's second L
    dispatcher = stack.deployment.dispatcher
    wait_until(lambda: f"Call {call.call_id}: re-INVITE answered" in dispatcher.output(), "the answer to the callee's re-INVITE")
    # media through the stream as the re-INVITE left it; the caller's sipp checked that the
    # re-INVITE reached it with the relay in its SDP
    caller_side, callee_side = call.media(packets=10)
    call.next()
    call.finish()
    record = call.record()
    assert len(record["streams"]) == 1
    stream = check_record(record, 10)
    assert (stream["caller_local"], stream["callee_local"]) == (caller_side, callee_side)


@pytest.mark.parametrize("style", STYLES)
def test_cancel_after_early_media(stack, style):
    """Early media on the 183, then the caller gives up: the session goes and the call is accounted."""
    caller, callee = parties(style)
    steps = [*caller.invite(sdp(CALLER_IP, ("audio", AUDIO[0]))), _early(), *wait()]
    steps += caller.cancel(invite_offset=elements(steps))
    call = Call(stack, f"cancel-after-183-{style}", steps, [*callee.ring(early=sdp(CALLEE_IP, ("audio", AUDIO[1]))), *callee.cancelled()])
    call.media(packets=10)
    call.next()
    call.finish()
    wait_until(lambda: all(session["call_id"] != call.call_id for session in stack.sessions()), "the relay session to go")
    check_record(call.record(), 10)


@pytest.mark.parametrize("style", STYLES)
def test_media_that_stops_ends_the_dialog_through_kamailio(stack, style):
    """The module never ends a call itself: the relay's expiry makes the dispatcher send
    dlg.terminate_dlg with the Call-ID and tags, and Kamailio BYEs both ends."""
    call, record = media_stops(stack, f"media-stops-{style}", *parties(style))
    check_record(record, 20, status="conntrack timeout")
    ended = [line for line in stack.deployment.dispatcher.output().splitlines() if "The proxy ended dialog tags" in line]
    assert [line for line in ended if line.endswith(f"of call {call.call_id}")], stack.context()

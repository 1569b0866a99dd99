"""What the model's events say in the relay's log, for those events that only need saying:
one function an event (the session manager carries out the others on the plane)."""

from __future__ import annotations

from mediaproxy.net.ratelimit import Refusals
from mediaproxy.relay import reports
from mediaproxy.relay.model import events
from mediaproxy.relay.model.media import address_text
from mediaproxy.relay.model.stream import Stream
from mediaproxy.runtime.log import Logger

log = Logger(namespace="relay.session")
media_log = Logger(namespace="relay.media")


def old_cseq(event: events.OldCseq) -> None:
    log.info("Got old CSeq {cseq} for call {call_id}; ignoring its SDP", cseq=event.cseq, call_id=event.session.call_id)


def learnt(event: events.Learnt) -> None:
    replaced = event.replaced
    # taking a stream from another source is worth an operator's attention; learning is not
    (media_log.info if replaced else media_log.debug)(
        "{substream} {party} learnt at {ip}:{port}{replacing}",
        substream=event.substream,
        party=event.party,
        ip=event.address[0],
        port=event.address[1],
        replacing=f", replacing {address_text(replaced)} that fits the signalling less" if replaced else "",
    )


def path_changed(event: events.PathChanged, forwarder) -> None:  # an IForwarder
    # the RTP's path is the stream's (one line per change); RTCP follows it
    (media_log.info if event.substream.kind == "rtp" else media_log.debug)(
        "{substream}: {old} → {new}",
        substream=event.substream,
        old=reports.logged_path(forwarder, event.old),
        new=reports.logged_path(forwarder, event.new),
    )


def hold_changed(event: events.HoldChanged) -> None:
    media_log.info("{stream} is {state}", stream=event.stream, state="on hold" if event.on_hold else "off hold")


def moved(event: events.Moved) -> None:
    ip, port = event.address
    media_log.info("{party} of {stream} moved to {ip}:{port}", party=event.party, stream=event.stream, ip=ip, port=port)


def relearning(event: events.Relearning) -> None:
    media_log.debug("{substream} expired ({reason}); will learn it afresh", substream=event.substream, reason=event.reason)


def ice_unselected(event: events.IceUnselected) -> None:
    if not event.probed:
        media_log.info("ICE stream {stream} expired and neither side sent a STUN binding request", stream=event.stream)


def stream_ended(stream: Stream) -> None:
    if stream.status not in ("closed", "rejected"):
        media_log.info("{stream} ended: {status}", stream=stream, status=stream.status)


def refused(event: events.Refused, refusals: Refusals) -> None:
    """Counted, and logged once a minute per peer."""
    if event.kind == "stun_queue_full":
        refusals.refuse(
            event.kind,
            event.peer,
            media_log,
            "STUN from {peer} for {stream} dropped: the queue waiting for the other party is full",
            stream=str(event.substream.stream),
        )
        return
    side = event.substream.side(event.detail)
    refusals.refuse(
        event.kind,
        event.peer,
        media_log,
        "Packets from {peer} to {stream} ignored: the {party} is latched to {latched}",
        level="info",
        stream=str(event.substream.stream),
        party=event.detail,
        latched=address_text(side.remote),
    )

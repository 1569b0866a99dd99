"""A call as the relay sees it: SDP offer/answer per (caller cseq, callee cseq), replies, statistics."""

from __future__ import annotations

from collections.abc import Callable

from mediaproxy.relay.model import events
from mediaproxy.relay.model.media import ALIVE, LiveCounters, _no_kernel
from mediaproxy.relay.model.policy import MediaPolicy
from mediaproxy.relay.model.shared import SharedValues
from mediaproxy.relay.model.sides import CALLEE, CALLER
from mediaproxy.relay.model.stream import Stream
from mediaproxy.wire import statistics as records
from mediaproxy.wire.headers import SignalingInfo
from mediaproxy.wire.update import UpdateReply


class UpdateError(Exception):
    """The update cannot be applied; the relay answers ``error`` and logs the text."""


class NoPorts(Exception):
    """No stream can be opened: the relay's ports are all in use (raised by ``open_stream``)."""


class TooManyStreams(Exception):
    """The call has opened as many streams as a call may (``MAX_STREAMS``)."""


# user agents repeat from call to call (a network has a few phone models): each distinct short text is held once
_SHARED_TEXTS = SharedValues(4096)
MAX_SHARED_LENGTH = 200


def shared_text(text: str | None) -> str | None:
    """``text``, or the equal string already held for another session."""
    if text is None or len(text) > MAX_SHARED_LENGTH:
        return text
    return _SHARED_TEXTS(text)


# the (caller cseq, callee cseq) pairs of offers: many calls' are small numbers, each such pair held once
SHARED_CSEQS = 16
_SHARED_PAIRS = SharedValues(SHARED_CSEQS * SHARED_CSEQS)


def shared_pair(pair: tuple[int, int]) -> tuple[int, int]:
    return _SHARED_PAIRS(pair) if pair[0] < SHARED_CSEQS and pair[1] < SHARED_CSEQS else pair


# the offers a session remembers, the latest: a reply names the CSeq of its offer, which is one of
# the last few; a dialog that re-invites for ever (session timers, or a peer) must not grow without end
MAX_OFFERS = 16
# the streams a session holds: each answered one stays for its accounting record, so a dialog whose
# re-INVITEs keep moving its media to new ports is refused a new stream past this many (a long call
# refreshed by session timers offers the same ports again and opens none); a stream never answered
# goes once no remembered offer names it, as no record or reply can show it
MAX_STREAMS = 128

# opens a stream of a media type for a session: its ports bound and its sockets attached
OpenStream = Callable[["Session", str], Stream]


class Session:
    __slots__ = (
        "policy", "clock", "dispatcher", "call_id", "caller_tag", "from_uri", "to_uri", "to_tag", "caller_ua", "callee_ua",
        "signaling", "created", "start_time", "end_time", "ended", "end_reason", "streams", "offers", "pair", "previous_pair",
        "serial", "dialog_id", "_outbox", "key", "kept_packets",
    )  # fmt: skip

    def __init__(self, headers: dict, dispatcher: object, serial: int, policy: MediaPolicy, clock) -> None:
        self.policy = policy
        self.clock = clock
        self.dispatcher = dispatcher
        self.call_id = headers["call_id"]
        self.caller_tag = headers["from_tag"]
        self.from_uri = headers["from_uri"]
        self.to_uri = headers["to_uri"]
        self.to_tag: str | None = None
        self.caller_ua: str | None = None
        self.callee_ua: str | None = None
        self.signaling: SignalingInfo = headers["signaling_ip"]  # decoded by the wire
        self.created = clock.seconds()
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.pair = (0, 0)
        self.previous_pair: tuple[int, int] | None = None
        # ((pair, its streams), ...) oldest first, and every stream ever opened: tuples, not a dict
        # and lists (224 and 112 bytes a session), as most calls make one offer in their life and
        # its streams are then all the session's (the same tuple)
        self.offers: tuple[tuple[tuple[int, int], tuple[Stream, ...]], ...] = ()
        self.streams: tuple[Stream, ...] = ()
        self.ended = False
        self.end_reason: str | None = None
        self.serial = serial  # creation order, where a page of sessions starts
        self.dialog_id: str | None = headers.get("dialog_id")  # for a dispatcher that lost its call table
        self._outbox: list | None = None  # events for the session manager (see model.events)
        # made once: the manager's tables all hold this one tuple (thousands of sessions)
        self.key: tuple[str, str] = (self.call_id, self.caller_tag)
        self.kept_packets = -1  # the userspace packets when the session was last kept (-1: never)

    def __str__(self) -> str:
        return self.call_id

    @property
    def outbox(self) -> list:
        """The events queued for the session manager (see model.events); the list is made when the
        first is queued, as most sessions are idle with none (an empty list is 56 bytes)."""
        queued = self._outbox
        if queued is None:
            queued = self._outbox = []
        return queued

    @outbox.setter
    def outbox(self, queued: list) -> None:
        self._outbox = queued

    def take_events(self) -> list:
        """The events queued so far, in order; the outbox is empty after."""
        queued, self._outbox = self._outbox, None
        return queued or []

    def update(self, headers: dict, open_stream: OpenStream) -> str:
        """Apply an offer or answer; returns the reply line (relay IP and ports, or ``None``)."""
        from_tag = headers["from_tag"]
        is_caller = from_tag == self.caller_tag
        kind = headers["type"]
        downstream = (not is_caller) != (kind == "request")
        party = CALLER if downstream else CALLEE
        self._note(headers, is_caller, party)
        cseq = headers["cseq"]
        pair = (cseq, self.pair[1]) if is_caller else (self.pair[0], cseq)
        media = headers.get("media")
        # where this message came from: the party's address as the proxy saw it, for latching
        source_ip = headers["signaling_ip"].caller_ip
        if pair > self.pair:
            if media is not None:
                self._offer(pair, party, media, source_ip, open_stream)
        elif pair == self.pair:
            self._answer(party, media, source_ip)
        else:
            self.outbox.append(events.OldCseq(self, cseq))
        return self._reply(0 if is_caller else 1, cseq, downstream, media is not None)

    def _note(self, headers: dict, is_caller: bool, party: str) -> None:
        """What a message tells of the dialog once: the callee's tag, the dialog id, each party's user agent."""
        to_tag = headers.get("to_tag")
        if is_caller and to_tag and self.to_tag is None:
            self.to_tag = to_tag
        if self.dialog_id is None and headers.get("dialog_id"):
            self.dialog_id = headers["dialog_id"]
        if party == CALLER and self.caller_ua is None:
            self.caller_ua = shared_text(headers["user_agent"])
        elif party == CALLEE and self.callee_ua is None:
            self.callee_ua = shared_text(headers["user_agent"])

    def _offer(self, pair: tuple[int, int], party: str, media: list, source_ip: str | None, open_stream: OpenStream) -> None:
        current = [stream for stream in self.offered(self.pair) if stream.alive]
        offered: list[Stream] = []
        created: list[Stream] = []
        try:
            for entry in media:
                stream = self._stream_for(current, offered, created, party, entry, open_stream)
                stream.describe_party(party, entry, source_ip)
                if entry.port == 0:
                    stream.close("closed")
                offered.append(stream)
        except (NoPorts, TooManyStreams) as error:
            for stream in created:
                stream.close("closed")
            raise UpdateError(f"cannot relay call {self.call_id}: {error}") from None
        self._offered(pair, current, offered, created)

    def _stream_for(
        self, current: list, offered: list, created: list, party: str, entry, open_stream: OpenStream
    ) -> Stream:  # a MediaEntry
        """The stream of the offer before that ``entry`` describes again, else a new one (in ``created``)."""
        stream = next((s for s in current if s not in offered and s.matches(party, entry)), None)
        if stream is None:
            if len(self.streams) + len(created) >= MAX_STREAMS:
                raise TooManyStreams(f"call {self.call_id} has opened {MAX_STREAMS} streams, the most a call may")
            stream = open_stream(self, entry.media_type)
            created.append(stream)
        return stream

    def _offered(self, pair: tuple[int, int], current: list, offered: list, created: list) -> None:
        """The offer made: remembered at ``pair``; the streams no remembered offer keeps are closed."""
        kept = tuple(offered)
        if created:
            self.streams = kept if not self.streams and len(created) == len(kept) else (*self.streams, *created)
        for stream in self.offered(self.previous_pair) if self.previous_pair is not None else ():
            if stream not in current and stream not in offered:
                stream.close("closed")
        self.previous_pair, self.pair = self.pair, shared_pair(pair)
        if len(self.offers) >= MAX_OFFERS:
            self._forget(self.offers[0][1], (*self.offers[1:], (self.pair, kept)))
        self.offers = (*self.offers[1 - MAX_OFFERS :], (self.pair, kept))

    def _forget(self, dropped: tuple[Stream, ...], remembered: tuple) -> None:
        """Let go of the streams of an offer that drops out of memory that were never answered and
        that no remembered offer names: no reply, record or answer can reach them any more."""
        named = {id(stream) for _, streams in remembered for stream in streams}
        gone = {id(stream) for stream in dropped if stream.start_time is None and not stream.alive and id(stream) not in named}
        if gone:
            self.streams = tuple(stream for stream in self.streams if id(stream) not in gone)

    def offered(self, pair: tuple[int, int]) -> tuple[Stream, ...]:
        """The streams of the offer made at ``pair`` (none when there was no such offer)."""
        for known, streams in reversed(self.offers):
            if known == pair:
                return streams
        return ()

    def _answer(self, party: str, media: list | None, source_ip: str | None) -> None:
        offered = self.offered(self.pair)
        self._started(offered)
        if media is None:
            return  # a 200 OK without SDP confirms the offer as it stands
        for stream, entry in zip(offered, media):
            if stream.media_type != entry.media_type:
                raise UpdateError(f"answer for call {self.call_id} has a {entry.media_type} stream where the offer had {stream.media_type}")
        for stream in offered[len(media) :]:
            stream.close("rejected")
        for stream, entry in zip(offered, media):
            if stream.alive:
                if entry.port == 0:
                    stream.close("rejected")
                else:
                    stream.answer(party, entry, source_ip)
        self._close_previous(offered)

    def _started(self, offered: tuple[Stream, ...]) -> None:
        now = self.clock.seconds()
        if self.start_time is None:
            self.start_time = now
        for stream in offered:
            if stream.start_time is None:
                stream.start_time = now

    def _close_previous(self, offered: tuple[Stream, ...]) -> None:
        """The answered offer replaces the one before: its streams that this one left out are closed."""
        if self.previous_pair is not None:
            for stream in self.offered(self.previous_pair):
                if stream not in offered:
                    stream.close("closed")

    def _reply(self, position: int, cseq: int, downstream: bool, has_media: bool) -> str:
        streams = None
        for pair, offered in reversed(self.offers):
            if pair[position] == cseq:
                streams = offered
                break
        if not streams:
            if has_media:
                raise UpdateError(f"no offer of call {self.call_id} matches cseq {cseq}")
            return UpdateReply(None).format()
        facing = CALLEE if downstream else CALLER
        ports = tuple(stream.local(facing)[1] if stream.status in ALIVE else 0 for stream in streams)
        return UpdateReply(self.policy.advertised_ip or streams[0].local(facing)[0], ports).format()

    def alive_streams(self) -> list[Stream]:
        pairs = [self.pair] if self.previous_pair is None else [self.pair, self.previous_pair]
        return [stream for pair in pairs for stream in self.offered(pair) if stream.alive]

    def stream_expired(self, stream: Stream) -> None:
        if not self.alive_streams():
            self.outbox.append(events.SessionExpired(self, records.stream_end_reason(stream.status) or records.NO_TRAFFIC))

    def end(self, reason: str) -> None:
        """Close every stream; the session keeps its statistics."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self.end_time = self.clock.seconds()
        for stream in self.streams:
            stream.close("closed")

    @property
    def duration(self) -> int:
        if self.start_time is None:
            return 0
        return int((self.end_time if self.end_time is not None else self.clock.seconds()) - self.start_time)

    def userspace_packets(self) -> int:
        return sum(side.packets for stream in self.streams for side in stream.all_sides())

    def relayed(self, live: LiveCounters = _no_kernel) -> tuple[int, int]:
        """(packets, bytes) relayed both ways, over both paths."""
        packets = bytes_ = 0
        for stream in self.streams:
            for party in (CALLER, CALLEE):
                stream_packets, stream_bytes = stream.counters(party, live)
                packets += stream_packets
                bytes_ += stream_bytes
        return packets, bytes_

    def relayed_bytes(self, live: LiveCounters = _no_kernel) -> int:
        return self.relayed(live)[1]

    def statistics(self, live: LiveCounters = _no_kernel) -> records.SessionRecord:
        duration = self.duration
        answered = sorted((stream for stream in self.streams if stream.start_time is not None), key=lambda stream: stream.start_time)
        return records.SessionRecord(
            call_id=self.call_id,
            from_tag=self.caller_tag,
            from_uri=self.from_uri,
            to_tag=self.to_tag,
            to_uri=self.to_uri,
            start_time=self.start_time,
            duration=duration,
            caller_ua=self.caller_ua or "Unknown",
            callee_ua=self.callee_ua or "Unknown",
            username=self.signaling.username or records.uri_user(self.from_uri),
            end_reason=self.end_reason,
            dialog_id=self.dialog_id,
            streams=[stream.statistics(self.start_time, duration, live) for stream in answered],
        )

"""The rtpproxy front end: Kamailio's ``rtpproxy`` module drives the same relays, calls and
accounting as the ``mediaproxy`` module does.

The module sends one ``U`` (offer) or ``L`` (answer) per m= line, tagged ``;N``, and no CSeq,
From/To URI or SDP direction. Each command becomes the ``update`` the mediaproxy module would
have sent for the message so far: the streams this offer (or answer) has named up to N, a
CSeq of our own that grows with every offer of the party, ``type: request`` for an offer and
``reply`` for an answer, the offerer's tag as From. So the relay sees an ordinary call: the
same stream keeps its ports across re-offers, a stream added by ``;2`` is added to the offer,
and an answer's port 0 rejects its stream. What a call needs between commands (the parties'
tags, CSeqs and the current offer) is kept in the call table's entry, journalled with it, so a
dispatcher restarted mid-call answers the next ``L`` or re-offer as before.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from twisted.internet import defer

from mediaproxy.net.ratelimit import Refusals
from mediaproxy.runtime.log import Logger
from mediaproxy.wire import rtpproxy
from mediaproxy.wire.control import ProxyRequest, RequestError, parse_request
from mediaproxy.wire.rtpproxy import Command, CommandError
from mediaproxy.wire.update import parse_update_reply

log = Logger(namespace="dispatcher.rtpproxy")

UNKNOWN = "unknown"  # the module sends no URIs or user agents
# static payload types that are video (RFC 3551); anything else the module lists is taken as audio
_VIDEO_TYPES = {25, 26, 28, 31, 32, 33, 34}
# a call's D may come twice (unforce on the CANCEL, again in the failure route): one deleted this
# long ago is answered as gone without asking every relay for it
DELETED_MEMORY = 30.0
DELETED_LIMIT = 4096
QUERY_TTL = 60


@dataclass
class CallMedia:
    """One call as the rtpproxy module has described it so far. Party 0 is the first offerer."""

    tags: list = field(default_factory=lambda: [None, None])
    cseqs: list = field(default_factory=lambda: [0, 0])
    offerer: int | None = None  # who made the current offer
    offered: list = field(default_factory=list)  # its streams: [type, ip, port, asymmetric]
    answered: list = field(default_factory=list)  # the answer per stream so far ([ip, port, asymmetric] or None)
    answer_ports: list = field(default_factory=list)  # the relay port facing the answerer, per stream

    def to_json(self) -> dict:
        return {
            "tags": self.tags,
            "cseqs": self.cseqs,
            "offerer": self.offerer,
            "offered": self.offered,
            "answered": self.answered,
            "answer_ports": self.answer_ports,
        }

    @classmethod
    def from_json(cls, item: dict) -> CallMedia:
        tags, cseqs, offerer = _checked_pairs(item)
        return cls(
            [None if tag is None else str(tag) for tag in tags],
            list(cseqs),
            offerer,
            [list(entry) for entry in item["offered"]],
            [None if entry is None else list(entry) for entry in item["answered"]],
            [int(port) for port in item["answer_ports"]],
        )

    def party(self, tag: str, other: str | None = None) -> int | None:
        """Which party ``tag`` is (learning the second party's tag on first sight), or None."""
        if self.tags[0] is None:
            self.tags[0] = tag
        if tag == self.tags[0]:
            if other is not None and self.tags[1] is None:
                self.tags[1] = other
            return 0
        if self.tags[1] is None:
            self.tags[1] = tag
        return 1 if tag == self.tags[1] else None


def _checked_pairs(item: dict) -> tuple[list, list, int | None]:
    """A kept call's tags, CSeqs and offerer, or ValueError naming what is wrong with them."""
    tags, cseqs = item["tags"], item["cseqs"]
    if len(tags) != 2 or len(cseqs) != 2 or not all(isinstance(number, int) for number in cseqs):
        raise ValueError("tags and cseqs are not pairs")
    offerer = item["offerer"]
    if offerer not in (None, 0, 1):
        raise ValueError(f"offerer {offerer!r} is not 0 or 1")
    return tags, cseqs, offerer


def media_type(codecs: tuple) -> str:
    return "video" if codecs and all(codec in _VIDEO_TYPES for codec in codecs) else "audio"


def _media_line(kind: str, ip: str, port: int, asymmetric: bool) -> str:
    text = f"{kind}:{ip}:{port}:sendrecv"
    return f"{text}:asymmetric=yes" if asymmetric else text


def _standing(media: CallMedia, party: int) -> tuple[list, list]:
    """What an offer of ``party`` starts from: the streams as offered and as answered so far."""
    if media.offerer is None or media.offerer == party:
        return media.offered, media.answered
    # the other party offers now (a callee's re-INVITE): its answer was its last word on each
    # stream, and the former offer is now the answer standing for those not yet answered
    baseline = [[kind, *(entry or ["0.0.0.0", 0, False])] for (kind, *_), entry in zip(media.offered, media.answered)]
    answered = [[ip, port, asymmetric] for _, ip, port, asymmetric in media.offered]
    return baseline, answered


class RtpproxyFrontEnd:
    """Answers rtpproxy commands through the dispatcher (``handle`` and its call ``table``)."""

    def __init__(self, dispatcher, refusals: Refusals | None = None) -> None:
        self.dispatcher = dispatcher
        self.refusals = refusals or Refusals(dispatcher.clock)
        self._busy: dict[str, defer.Deferred] = {}  # call-id → the command being done for it
        self._deleted: OrderedDict[str, float] = OrderedDict()  # call-id → when its D removed it

    def execute(self, text: str, peer: str = "") -> defer.Deferred:
        """The reply text for one command from ``peer`` (never fails: a refusal is ``E<n>``, and
        a log line, one per peer a minute for commands that do not even parse)."""
        try:
            command = rtpproxy.parse(text)
        except CommandError as error:
            self.refusals.refuse(
                "rtpproxy_bad_command",
                peer,
                log,
                "rtpproxy command {command!r} from {peer} refused: {error}",
                command=text[:120],
                error=str(error),
            )
            return defer.succeed(rtpproxy.error(error.code))
        if command.kind == "V":
            return defer.succeed(rtpproxy.PROTOCOL_VERSION)
        if command.kind == "VF":
            return defer.succeed(rtpproxy.capability(command.argument))
        # a call's commands one after another: each reads what the one before it kept. The turn
        # is a Deferred of our own, so no caller's callbacks ever see another command's reply
        previous = self._busy.get(command.call_id)
        turn, done = defer.Deferred(), defer.Deferred()
        self._busy[command.call_id] = turn

        def start(_: object = None) -> None:
            defer.maybeDeferred(self._run, command).addBoth(self._finished, command.call_id, turn, done)

        if previous is None:
            start()
        else:
            previous.addCallback(start)
        return done

    def _finished(self, reply: object, call_id: str, turn: defer.Deferred, done: defer.Deferred) -> None:
        if self._busy.get(call_id) is turn:
            del self._busy[call_id]
        if not isinstance(reply, str):
            log.failure("Unexpected failure on an rtpproxy command for call {call_id}", reply, call_id=call_id)
            reply = rtpproxy.error(rtpproxy.SOFTWARE)
        done.callback(reply)
        turn.callback(None)

    def _run(self, command: Command):  # a reply or a Deferred of one
        try:
            if "6" in command.modifiers:
                # the relays' media lines and sockets are IPv4; the module forwards the SDP as it is
                raise CommandError(rtpproxy.SOFTWARE, "IPv6 media (the 6 modifier) is not relayed: the relays forward IPv4")
            if command.kind == "U":
                return self._offer(command)
            if command.kind == "L":
                return self._answer(command)
            if command.kind == "D":
                return self._delete(command)
            return self._query(command)
        except CommandError as error:
            log.warn("rtpproxy {kind} for call {call_id} refused: {error}", kind=command.kind, call_id=command.call_id, error=str(error))
            return rtpproxy.error(error.code)

    # -- the call's media as kept

    def _media(self, call_id: str) -> CallMedia | None:
        entry = self.dispatcher.table.get(call_id)
        if entry is None or entry.rtpproxy is None:
            return None
        try:
            return CallMedia.from_json(entry.rtpproxy)
        except (KeyError, TypeError, ValueError) as error:
            log.error("Call {call_id}: its kept rtpproxy state is unusable ({error}); starting afresh", call_id=call_id, error=error)
            return None

    def _keep(self, call_id: str, media: CallMedia) -> None:
        entry = self.dispatcher.table.get(call_id)
        if entry is not None:
            entry.rtpproxy = media.to_json()
            self.dispatcher.table.set(call_id, entry)

    # -- U: an offer, one stream at a time

    def _offer(self, command: Command):
        media = self._media(command.call_id) or CallMedia()
        party = media.party(command.from_tag.value, command.to_tag.value if command.to_tag else None)
        if party is None:
            raise CommandError(rtpproxy.NO_SESSION, f"tag {command.from_tag.value!r} is neither party's {media.tags}")
        number = command.from_tag.medianum
        baseline, answered = _standing(media, party)
        if len(baseline) < number - 1:
            raise CommandError(rtpproxy.NO_SESSION, f"offer of media {number} without the {number - 1} before it")
        # the offer is always every stream the call has: the module names them one by one, and a
        # stream left out of an update would be closed by the relay before the module names it
        offered = [list(entry) for entry in baseline]
        entry = [media_type(command.codecs), command.address, command.port, command.asymmetric]
        offered[number - 1 : number] = [entry]
        media.cseqs[party] += 1
        request = self._request(
            "request", command, media, party, media.cseqs[party], [_media_line(kind, ip, port, asym) for kind, ip, port, asym in offered]
        )
        if request is None:
            return rtpproxy.error(rtpproxy.SYNTAX)
        if party != media.offerer:
            media.answer_ports = []
        media.offerer, media.offered = party, offered
        # earlier answers stay until this offer's own come: they stand in for streams not yet answered
        media.answered = answered + [None] * (len(offered) - len(answered))
        media.answer_ports += [0] * (len(offered) - len(media.answer_ports))
        return self.dispatcher.handle(request).addCallback(self._offered, command, media, number)

    def _offered(self, reply: str, command: Command, media: CallMedia, number: int) -> str:
        port, ip = self._port(reply, command, number)
        if port is None:
            return rtpproxy.error(rtpproxy.SOFTWARE)
        media.answer_ports[number - 1] = port
        self._keep(command.call_id, media)
        return rtpproxy.address_reply(port, ip)

    # -- L: the answer, one stream at a time

    def _answer(self, command: Command):
        media, offerer = self._answered_offer(command)
        number = command.to_tag.medianum
        if number > len(media.offered):
            raise CommandError(rtpproxy.NO_SESSION, f"answer for media {number}; the offer has {len(media.offered)}")
        media.answered[number - 1] = [command.address, command.port, command.asymmetric]
        lines = []
        for index, (kind, _, offered_port, _) in enumerate(media.offered):
            # streams the module has not answered yet: as answered before, else like this one (the
            # module names them within the same message, a moment later)
            before = media.answered[index] if index < len(media.answered) else None
            ip, port, asymmetric = before or [command.address, offered_port, command.asymmetric]
            lines.append(_media_line(kind, ip, port, asymmetric))
        request = self._request("reply", command, media, offerer, media.cseqs[offerer], lines)
        if request is None:
            return rtpproxy.error(rtpproxy.SYNTAX)
        return self.dispatcher.handle(request).addCallback(self._answered, command, media, number)

    def _answered_offer(self, command: Command) -> tuple[CallMedia, int]:
        """The call an L answers and its offerer (0 or 1); CommandError when it answers none."""
        media = self._media(command.call_id)
        if media is None:
            raise CommandError(rtpproxy.NO_SESSION, "an answer for a call with no offer")
        if command.to_tag is None:
            raise CommandError(rtpproxy.SYNTAX, "an answer without the answerer's tag")
        offerer = media.party(command.from_tag.value, command.to_tag.value)
        if offerer is None or offerer != media.offerer:
            raise CommandError(rtpproxy.NO_SESSION, f"tag {command.from_tag.value!r} did not make the call's current offer")
        if media.party(command.to_tag.value) != 1 - offerer:
            raise CommandError(rtpproxy.NO_SESSION, f"tag {command.to_tag.value!r} is not the other party's")
        return media, offerer

    def _answered(self, reply: str, command: Command, media: CallMedia, number: int) -> str:
        port, ip = self._port(reply, command, number)
        if port is None:
            return rtpproxy.error(rtpproxy.SOFTWARE)
        self._keep(command.call_id, media)
        if port == 0:  # a rejected stream: the module keeps its m= port 0 but wants a port in the reply
            port = media.answer_ports[number - 1] or 9
        return rtpproxy.address_reply(port, ip)

    # -- D and Q

    def _delete(self, command: Command):
        if command.call_id not in self.dispatcher.table and self._recently_deleted(command.call_id):
            log.debug("rtpproxy D for call {call_id}, deleted a moment ago", call_id=command.call_id)
            return rtpproxy.error(rtpproxy.NO_SESSION)
        lines = [f"call_id: {command.call_id}", f"from_tag: {command.from_tag.value}"]
        if command.to_tag is not None:
            lines.append(f"to_tag: {command.to_tag.value}")
        request = parse_request(["remove", *lines])
        return self.dispatcher.handle(request).addCallback(self._deleted_reply, command.call_id)

    def _deleted_reply(self, reply: str, call_id: str) -> str:
        if reply != "removed":
            return rtpproxy.error(rtpproxy.NO_SESSION)
        self._deleted.pop(call_id, None)
        self._deleted[call_id] = self.dispatcher.clock.seconds()
        while len(self._deleted) > DELETED_LIMIT:
            self._deleted.popitem(last=False)
        return "0"

    def _recently_deleted(self, call_id: str) -> bool:
        deadline = self.dispatcher.clock.seconds() - DELETED_MEMORY
        while self._deleted and next(iter(self._deleted.values())) < deadline:
            self._deleted.popitem(last=False)
        return call_id in self._deleted

    def _query(self, command: Command):
        """rtpproxy's ``<ttl> <packets from the first tag's party> <from the other> <relayed>
        <dropped>`` for the stream ``;N`` names, read from the call's relay."""
        entry = self.dispatcher.table.get(command.call_id)
        if entry is None or entry.expire_time is not None:
            raise CommandError(rtpproxy.NO_SESSION, "query for a call not known")
        link = self.dispatcher.registry.get(entry.relay_ip)
        if link is None:
            raise CommandError(rtpproxy.SOFTWARE, f"the call's relay {entry.relay_ip} is not connected")
        media = self._media(command.call_id)
        return link.fetch_sessions(command.call_id).addCallbacks(
            self._queried, self._query_failed, callbackArgs=(command, media), errbackArgs=(command,)
        )

    def _queried(self, listing, command: Command, media: CallMedia | None) -> str:  # a SessionList
        if not listing.records:
            return rtpproxy.error(rtpproxy.NO_SESSION)
        streams = listing.records[0].streams
        number = command.from_tag.medianum
        if number > len(streams):
            return rtpproxy.error(rtpproxy.NO_SESSION)
        stream = streams[number - 1]
        # the relay's caller is the call's first offerer, the first tag the module ever sent
        first_is_caller = media is None or command.from_tag.value == media.tags[0]
        if first_is_caller:
            mine, theirs = stream.caller_packets, stream.callee_packets
        else:
            mine, theirs = stream.callee_packets, stream.caller_packets
        # rtpproxy's ttl counts down while no media comes; the relay's timers are not in its
        # listing, so an alive stream answers rtpproxy's default ttl and an ended one 0
        ttl = QUERY_TTL if stream.status in ("active", "on hold") else 0
        return f"{ttl} {mine} {theirs} {mine + theirs} 0"

    def _query_failed(self, failure, command: Command) -> str:
        log.warn(
            "rtpproxy Q for call {call_id}: the relay did not answer ({error})", call_id=command.call_id, error=failure.getErrorMessage()
        )
        return rtpproxy.error(rtpproxy.SOFTWARE)

    # -- shared

    def _request(self, kind: str, command: Command, media: CallMedia, party: int, cseq: int, lines: list[str]) -> ProxyRequest | None:
        other = media.tags[1 - party]
        headers = [
            f"type: {kind}",
            f"call_id: {command.call_id}",
            f"from_tag: {media.tags[party]}",
            f"from_uri: {UNKNOWN}",
            f"to_uri: {UNKNOWN}",
            f"cseq: {cseq}",
            f"user_agent: {UNKNOWN}",
            f"signaling_ip: {command.address}",
            f"media: {','.join(lines)}",
        ]
        if other is not None:
            headers.insert(3, f"to_tag: {other}")
        try:
            return parse_request(["update", *headers])
        except RequestError as error:
            log.warn(
                "rtpproxy {kind} for call {call_id} cannot be relayed: {error}", kind=command.kind, call_id=command.call_id, error=error
            )
            return None

    def _port(self, reply: str, command: Command, number: int) -> tuple[int | None, str]:
        try:
            parsed = parse_update_reply(reply)
        except ValueError:
            parsed = None
        if parsed is None or parsed.ip is None or len(parsed.ports) < number:
            log.warn(
                "rtpproxy {kind} for call {call_id}: the relay answered {reply!r}", kind=command.kind, call_id=command.call_id, reply=reply
            )
            return None, ""
        return parsed.ports[number - 1], parsed.ip

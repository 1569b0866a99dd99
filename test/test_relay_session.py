"""The relay's session state machine, driven in memory with a fake clock and fake sockets."""

import dataclasses
import json
import struct

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from zope.interface import implementer

from harness import logged
from mediaproxy import statefile
from mediaproxy.configuration import RelayConfig
from mediaproxy.datatypes import PortRange, network_range_list
from mediaproxy.relay import reports
from mediaproxy.relay.model import serialize
from mediaproxy.relay.model.packets import codec_name, is_stun
from mediaproxy.relay.model.session import MAX_OFFERS, MAX_STREAMS
from mediaproxy.relay.plane.interfaces import IForwarder
from mediaproxy.relay.plane.ports import PortPool
from mediaproxy.relay.sessions import Halting, SessionManager, UpdateError
from mediaproxy.testing import FakeBinder, InOrder, headers
from mediaproxy.wire.headers import SignalingInfo
from mediaproxy.wire.update import UpdateReply

RELAY = "203.0.113.5"
CALLER_SDP = ("192.0.2.10", 6000)
CALLEE_SDP = ("198.51.100.20", 7000)
CALLER_NAT = ("192.0.2.99", 30000)  # where the caller's packets really come from
CALLEE_NAT = ("198.51.100.99", 31000)
DEFAULT_RANGE = PortRange(40000, 40100)


def rtp(payload_type=0, size=172):
    return bytes([0x80, payload_type]) + b"\x00" * (size - 2)


def stun_binding_request():
    return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + b"\x00" * 12


def make_update(
    kind="request", cseq=1, from_tag="ft", to_tag="", media="audio:192.0.2.10:6000:sendrecv:ice=no", call_id="c1", ua="ua", **extra
):
    lines = [
        f"type: {kind}",
        f"call_id: {call_id}",
        f"cseq: {cseq}",
        "from_uri: alice@example.com",
        "to_uri: bob@example.com",
        f"from_tag: {from_tag}",
        f"to_tag: {to_tag}",
        f"user_agent: {ua}",
        f"signaling_ip: {extra.get('signaling_ip', _nat_of(kind, from_tag))}",
    ]
    if media is not None:
        lines.append(f"media: {media}")
    return headers("\n".join(lines))


def _nat_of(kind, from_tag):
    """Where the proxy saw the message come from: the NAT of the party that sent it (a NATed
    phone's media comes from its NAT's address too, so the relay trusts it at once)."""
    from_caller = (from_tag == "ft") == (kind == "request")
    return (CALLER_NAT if from_caller else CALLEE_NAT)[0]


class Relay:
    def __init__(self, port_range=DEFAULT_RANGE, **options):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.binder = FakeBinder()
        self.expired = []
        config = RelayConfig(port_range=port_range, **options)
        self.manager = SessionManager(self.clock, config, self.binder, lambda session, stats: self.expired.append(stats), RELAY)
        self.manager.pool = PortPool(port_range, rng=InOrder())

    def update(self, **kwargs):
        return self.manager.update(make_update(**kwargs), dispatcher="d1")

    def remove(self, call_id="c1", from_tag="ft", to_tag="tt"):
        return self.manager.remove(headers(f"call_id: {call_id}\nfrom_tag: {from_tag}\nto_tag: {to_tag}"))

    def socket(self, port):
        return self.binder.by_port[port]

    def call(self, caller_media="audio:192.0.2.10:6000:sendrecv:ice=no", callee_media="audio:198.51.100.20:7000:sendrecv:ice=no"):
        offer = self.update(media=caller_media, ua="caller-ua")
        answer = self.update(kind="reply", to_tag="tt", media=callee_media, ua="callee-ua")
        return offer, answer

    @property
    def free_pairs(self):
        pool = self.manager.pool
        return len(pool.free) + len(pool.cooling) + len(pool.bad)


def test_plain_call_ports_learning_forwarding_and_statistics():
    relay = Relay()
    offer, answer = relay.call()
    # the INVITE's SDP goes to the callee: it gets the callee-facing port; the 200 OK gets the caller-facing one
    assert offer == f"{RELAY} 40002"
    assert answer == f"{RELAY} 40000"
    relay.clock.advance(0.5)
    caller_side, callee_side = relay.socket(40000), relay.socket(40002)
    caller_side.deliver(rtp(0), CALLER_NAT)
    # TEST-NET SDP addresses are not routable: nothing is sent before the callee is learnt
    assert callee_side.sent == []
    callee_side.deliver(rtp(8), CALLEE_NAT)
    assert caller_side.sent == [(rtp(8), CALLER_NAT)]
    caller_side.deliver(rtp(0), CALLER_NAT)
    assert callee_side.sent == [(rtp(0), CALLEE_NAT)]
    # a third party cannot hijack the latched address
    caller_side.deliver(rtp(0), ("192.0.2.66", 1))
    assert len(callee_side.sent) == 1
    relay.clock.advance(10)
    stats = relay.remove()
    assert stats["call_id"] == "c1" and stats["from_tag"] == "ft" and stats["to_tag"] == "tt"
    assert stats["caller_ua"] == "caller-ua" and stats["callee_ua"] == "callee-ua"
    assert stats["duration"] == 10
    (stream,) = stats["streams"]
    assert stream["status"] == "closed"
    assert stream["caller_codec"] == "G711u" and stream["callee_codec"] == "G711a"
    assert stream["caller_packets"] == 1 and stream["callee_packets"] == 1
    assert stream["caller_bytes"] == 172 + 28 and stream["callee_bytes"] == 172 + 28
    assert stream["caller_local"] == f"{RELAY}:40000" and stream["callee_local"] == f"{RELAY}:40002"
    assert stream["caller_remote"] == "192.0.2.99:30000" and stream["callee_remote"] == "198.51.100.99:31000"
    assert stream["post_dial_delay"] == pytest.approx(0.5)
    assert (stream["start_time"], stream["end_time"]) == (0, 10)
    assert relay.binder.open == set()
    assert relay.free_pairs == 50


def test_routable_sdp_address_gets_media_before_learning():
    relay = Relay(routable_private_ranges=network_range_list("198.51.100.0/24"))
    relay.call()
    relay.socket(40000).deliver(rtp(), CALLER_NAT)
    assert relay.socket(40002).sent == [(rtp(), CALLEE_SDP)]
    relay.socket(40001).deliver(b"\x80\xc8" + b"\x00" * 30, ("192.0.2.99", 30001))
    assert relay.socket(40003).sent == []  # RTCP is never sent before learning


def test_stun_is_queued_until_the_peer_is_known():
    relay = Relay()
    relay.call(caller_media="audio:192.0.2.10:6000:sendrecv:ice=yes", callee_media="audio:198.51.100.20:7000:sendrecv:ice=yes")
    probe = stun_binding_request()
    assert is_stun(probe)
    relay.socket(40000).deliver(probe, CALLER_NAT)
    assert relay.socket(40002).sent == []
    relay.socket(40002).deliver(probe, CALLEE_NAT)
    # the callee's probe reveals both parties: the queued probe and the new one are flushed
    assert relay.socket(40002).sent == [(probe, CALLEE_NAT)]
    assert relay.socket(40000).sent == [(probe, CALLER_NAT)]
    stats = reports.statistics(relay.manager)[0]["streams"][0]
    assert stats["post_dial_delay"] is None  # STUN is not media


def test_audio_video_with_video_rejected():
    relay = Relay()
    offer, answer = relay.call(
        caller_media="audio:192.0.2.10:6000:sendrecv:ice=no,video:192.0.2.10:6002:sendrecv:ice=no",
        callee_media="audio:198.51.100.20:7000:sendrecv:ice=no,video:198.51.100.20:0:sendrecv:ice=no",
    )
    assert offer == f"{RELAY} 40002 40006"
    assert answer == f"{RELAY} 40000 0"
    assert relay.free_pairs == 48  # the video's two pairs are back in the pool
    assert reports.stream_count(relay.manager) == {"audio": 1}
    streams = relay.remove()["streams"]
    assert [s["status"] for s in streams] == ["closed", "rejected"]
    assert streams[1]["start_time"] == streams[1]["end_time"]


def test_answer_with_fewer_streams_rejects_the_rest():
    relay = Relay()
    _, answer = relay.call(caller_media="audio:192.0.2.10:6000:sendrecv:ice=no,video:192.0.2.10:6002:sendrecv:ice=no")
    assert answer == f"{RELAY} 40000 0"
    assert [s["status"] for s in reports.statistics(relay.manager)[0]["streams"]] == ["active", "rejected"]


def test_mismatched_media_type_in_answer_is_an_error():
    relay = Relay()
    relay.update()
    with pytest.raises(UpdateError):
        relay.update(kind="reply", to_tag="tt", media="video:198.51.100.20:7000:sendrecv:ice=no")


@pytest.mark.parametrize(
    "held", ["audio:192.0.2.10:6000:sendonly:ice=no", "audio:0.0.0.0:6000:sendrecv:ice=no", "audio:192.0.2.10:6000:inactive:ice=no"]
)
def test_hold_and_unhold_keep_ports_and_use_the_hold_timer(held):
    relay = Relay(stream_timeout=90, on_hold_timeout=300)
    relay.call()
    relay.socket(40000).deliver(rtp(), CALLER_NAT)
    relay.socket(40002).deliver(rtp(), CALLEE_NAT)
    assert relay.update(cseq=2, media=held) == f"{RELAY} 40002"
    assert relay.update(kind="reply", cseq=2, to_tag="tt", media="audio:198.51.100.20:7000:recvonly:ice=no") == f"{RELAY} 40000"
    stream = reports.statistics(relay.manager)[0]["streams"][0]
    assert stream["status"] == "on hold"
    relay.clock.advance(200)  # longer than stream_timeout: a held call survives
    assert relay.expired == []
    assert relay.update(cseq=3) == f"{RELAY} 40002"
    relay.update(kind="reply", cseq=3, to_tag="tt", media="audio:198.51.100.20:7000:sendrecv:ice=no")
    assert reports.statistics(relay.manager)[0]["streams"][0]["status"] == "active"
    assert len(reports.statistics(relay.manager)[0]["streams"]) == 1
    relay.clock.advance(1000)  # both sides had media: no idle timer in userspace after unhold
    assert relay.expired == []


def test_hold_longer_than_on_hold_timeout_expires():
    relay = Relay(on_hold_timeout=300)
    relay.call()
    relay.update(cseq=2, media="audio:192.0.2.10:6000:sendonly:ice=no")
    relay.update(kind="reply", cseq=2, to_tag="tt", media="audio:198.51.100.20:7000:recvonly:ice=no")
    relay.clock.advance(301)
    (stats,) = relay.expired
    assert stats["streams"][0]["status"] == "on hold timeout"
    assert stats["streams"][0]["timeout_wait"] == 300
    assert relay.free_pairs == 50


def test_callee_reinvite_with_swapped_tags_and_own_cseq():
    relay = Relay()
    relay.call()
    relay.socket(40000).deliver(rtp(), CALLER_NAT)
    relay.socket(40002).deliver(rtp(), CALLEE_NAT)
    # the callee's re-INVITE: its own tag in from_tag, its own cseq 1, its SDP is upstream
    assert (
        relay.update(from_tag="tt", to_tag="ft", cseq=1, media="audio:198.51.100.20:7000:sendrecv:ice=no", ua="callee-ua")
        == f"{RELAY} 40000"
    )
    assert relay.update(kind="reply", from_tag="tt", to_tag="ft", cseq=1, media="audio:192.0.2.10:6000:sendrecv:ice=no") == f"{RELAY} 40002"
    stats = reports.statistics(relay.manager)[0]
    assert len(stats["streams"]) == 1 and stats["streams"][0]["status"] == "active"
    # the callee hangs up: remove with swapped tags finds the session through to_tag
    assert relay.remove(from_tag="tt", to_tag="ft")["call_id"] == "c1"


def talking_call(caller_from, callee_from):
    """A call whose parties each sent a first packet from the given addresses: (relay, the
    caller-facing RTP socket, the callee-facing one)."""
    relay = Relay(stream_timeout=90)
    relay.call()
    caller_side, callee_side = relay.socket(40000), relay.socket(40002)
    caller_side.deliver(rtp(), caller_from)
    callee_side.deliver(rtp(), callee_from)
    return relay, caller_side, callee_side


def reinvite_moving_the_callee(relay):
    """A caller re-INVITE whose answer moves the callee's audio to port 7002."""
    relay.update(cseq=2)
    relay.update(kind="reply", cseq=2, to_tag="tt", media="audio:198.51.100.20:7002:sendrecv:ice=no")


def test_reinvite_moving_a_port_resets_the_party():
    relay, caller_side, callee_side = talking_call(CALLER_NAT, CALLEE_NAT)
    reinvite_moving_the_callee(relay)
    # the old callee address is obsolete now; the new one is learnt from its first packet
    callee_side.deliver(rtp(), CALLEE_NAT)
    assert len(caller_side.sent) == 1
    callee_side.deliver(rtp(), ("198.51.100.99", 31002))
    assert caller_side.sent[-1] == (rtp(), CALLER_NAT)
    assert reports.statistics(relay.manager)[0]["streams"][0]["callee_remote"] == "198.51.100.99:31002"


def test_a_settled_side_opens_again_when_its_party_moves_or_its_rtcp_is_learnt_afresh():
    relay, caller_side, callee_side = talking_call(CALLER_SDP, CALLEE_SDP)
    assert caller_side.peer == CALLER_SDP and callee_side.peer == CALLEE_SDP  # exact fits are final at once
    reinvite_moving_the_callee(relay)
    assert callee_side.peer is None and caller_side.peer == CALLER_SDP  # the callee moved: learnt afresh
    callee_side.deliver(rtp(), ("198.51.100.20", 7002))
    assert caller_side.sent[-1] == (rtp(), CALLER_SDP) and callee_side.peer == ("198.51.100.20", 7002)
    # RTCP that goes quiet is learnt afresh, from anywhere again
    caller_rtcp, callee_rtcp = relay.socket(40001), relay.socket(40003)
    caller_rtcp.deliver(rtp(200), ("192.0.2.10", 6001))
    callee_rtcp.deliver(rtp(200), ("198.51.100.20", 7003))
    assert caller_rtcp.peer == ("192.0.2.10", 6001) and callee_rtcp.peer == ("198.51.100.20", 7003)
    for _ in range(3):
        relay.clock.advance(relay.manager.idle_timeout)
        caller_side.deliver(rtp(), CALLER_SDP)  # RTP goes on
        callee_side.deliver(rtp(), ("198.51.100.20", 7002))
        relay.manager.check_idle()
    assert caller_rtcp.peer is None and callee_rtcp.peer is None
    assert reports.statistics(relay.manager)[0]["streams"][0]["status"] == "active"


def test_reinvite_that_moves_without_new_media_times_out():
    relay, _, _ = talking_call(CALLER_NAT, CALLEE_NAT)
    reinvite_moving_the_callee(relay)
    relay.clock.advance(91)
    assert [s["status"] for s in relay.expired[0]["streams"]] == ["no-traffic timeout"]


def test_late_offer_first_update_is_a_reply():
    relay = Relay()
    # INVITE without SDP: the module sends nothing; the offer comes in the 200 OK
    assert relay.update(kind="reply", to_tag="tt", media="audio:198.51.100.20:7000:sendrecv:ice=no") == f"{RELAY} 40000"
    # the ACK carries the answer (same cseq, type request)
    assert relay.update(kind="request", to_tag="tt", media="audio:192.0.2.10:6000:sendrecv:ice=no") == f"{RELAY} 40002"
    stats = reports.statistics(relay.manager)[0]
    assert stats["start_time"] is not None and stats["streams"][0]["status"] == "active"


def test_reply_without_media_for_unknown_session_creates_nothing():
    relay = Relay()
    assert relay.update(kind="reply", to_tag="tt", media=None) == "None"
    assert relay.manager.sessions == {}


def test_200_ok_without_sdp_starts_the_call():
    relay = Relay()
    relay.update()
    relay.clock.advance(2)
    relay.update(kind="reply", to_tag="tt", media=None)
    stats = reports.statistics(relay.manager)[0]
    assert stats["start_time"] == relay.clock.seconds()
    assert stats["streams"][0]["status"] == "active"


def test_duplicate_200_ok_is_idempotent():
    relay = Relay()
    _, first = relay.call()
    second = relay.update(kind="reply", to_tag="tt", media="audio:198.51.100.20:7000:sendrecv:ice=no")
    assert first == second
    assert relay.free_pairs == 48


def test_cancel_remove_without_to_tag():
    relay = Relay()
    relay.update()
    stats = relay.remove(to_tag="")
    assert stats["start_time"] is None and stats["duration"] == 0 and stats["streams"] == []
    with pytest.raises(UpdateError):
        relay.remove(to_tag="")  # the second remove of use_media_proxy's CANCEL
    assert relay.free_pairs == 50


def test_old_cseq_is_ignored_and_answered_with_error_when_it_has_media():
    relay = Relay()
    relay.call()
    relay.update(cseq=3)
    with pytest.raises(UpdateError, match="no offer"):
        relay.update(cseq=2, media="audio:192.0.2.10:6004:sendrecv:ice=no")
    assert relay.update(cseq=1, media=None) == f"{RELAY} 40002"  # an old cseq still finds its own offer


def test_no_media_times_out_and_reports_expiry():
    relay = Relay(stream_timeout=90)
    relay.call()
    relay.clock.advance(89)
    assert relay.expired == []
    relay.clock.advance(2)
    (stats,) = relay.expired
    assert stats["streams"][0]["status"] == "no-traffic timeout"
    assert stats["streams"][0]["timeout_wait"] == 90
    assert relay.manager.sessions == {}
    assert relay.free_pairs == 50


def test_ice_stream_timeout_is_an_unselected_candidate():
    relay = Relay(stream_timeout=30)
    relay.call(caller_media="audio:192.0.2.10:6000:sendrecv:ice=yes", callee_media="audio:198.51.100.20:7000:sendrecv:ice=yes")
    relay.clock.advance(31)
    assert relay.expired[0]["streams"][0]["status"] == "unselected ICE candidate"


def test_rtcp_timeout_does_not_end_the_stream():
    relay = Relay(stream_timeout=30)
    relay.call()
    relay.socket(40000).deliver(rtp(), CALLER_NAT)
    relay.socket(40002).deliver(rtp(), CALLEE_NAT)
    relay.clock.advance(31)  # RTCP never came
    assert relay.expired == []
    assert reports.statistics(relay.manager)[0]["streams"][0]["status"] == "active"


def test_ports_exhausted_is_an_error_and_leaks_nothing():
    relay = Relay(port_range=PortRange(40000, 40008))  # 4 pairs: one stream takes two
    relay.update(call_id="a", media="audio:192.0.2.10:6000:sendrecv:ice=no")
    with pytest.raises(UpdateError, match="no free RTP/RTCP port pair"):
        relay.update(call_id="b", media="audio:192.0.2.10:6000:sendrecv:ice=no,video:192.0.2.10:6002:sendrecv:ice=no")
    assert relay.free_pairs == 2
    assert set(relay.manager.sessions) == {("a", "ft")}


def test_bad_ports_are_parked_and_skipped():
    relay = Relay()
    relay.binder.refuse.add(40000)
    offer, answer = relay.call()
    assert offer == f"{RELAY} 40004" and answer == f"{RELAY} 40002"
    assert list(relay.manager.pool.bad) == [40000]


def test_halting_refuses_new_sessions_but_serves_existing_ones():
    relay = Relay()
    relay.update()
    relay.manager.halting = True
    with pytest.raises(Halting):
        relay.update(call_id="new")
    assert relay.update(kind="reply", to_tag="tt", media="audio:198.51.100.20:7000:sendrecv:ice=no") == f"{RELAY} 40000"


def test_missing_required_header_is_an_error():
    relay = Relay()
    update = make_update()
    del update["signaling_ip"]
    with pytest.raises(UpdateError, match="signaling_ip"):
        relay.manager.update(update)


def test_username_from_json_signaling_ip():
    relay = Relay()
    relay.update(signaling_ip='{"signaling_ip": "192.0.2.10", "username": "alice@example.com"}')
    assert reports.statistics(relay.manager)[0]["username"] == "alice@example.com"


def test_thousand_cycles_leave_no_port_behind():
    relay = Relay(port_range=PortRange(40000, 40040), stream_timeout=5)
    for cycle in range(1000):
        call_id = f"call-{cycle}"
        relay.update(call_id=call_id, media="audio:192.0.2.10:6000:sendrecv:ice=no,video:192.0.2.10:6002:sendrecv:ice=no")
        ending = cycle % 3
        if ending == 0:
            relay.update(
                call_id=call_id,
                kind="reply",
                to_tag="tt",
                media="audio:198.51.100.20:7000:sendrecv:ice=no,video:198.51.100.20:0:sendrecv:ice=no",
            )
            relay.remove(call_id=call_id)
        elif ending == 1:
            relay.clock.advance(6)  # expiry
        else:
            relay.update(
                call_id=call_id,
                kind="reply",
                to_tag="tt",
                media="audio:198.51.100.20:0:sendrecv:ice=no,video:198.51.100.20:0:sendrecv:ice=no",
            )
            relay.clock.advance(6)
            if relay.manager.sessions:
                relay.remove(call_id=call_id)
    assert relay.manager.sessions == {}
    assert relay.free_pairs == 20
    assert relay.binder.open == set()


def test_summary_counts_alive_streams():
    relay = Relay()
    relay.call(
        caller_media="audio:192.0.2.10:6000:sendrecv:ice=no,video:192.0.2.10:6002:sendrecv:ice=no",
        callee_media="audio:198.51.100.20:7000:sendrecv:ice=no,video:198.51.100.20:7002:sendrecv:ice=no",
    )
    summary = reports.summary(relay.manager, 0.0)
    assert summary["ip"] == RELAY and summary["session_count"] == 1 and summary["status"] == "active"
    assert summary["stream_count"] == {"audio": 1, "video": 1}


@pytest.mark.parametrize(
    ("payload_type", "name"), [(0, "G711u"), (8, "G711a"), (18, "G729"), (34, "H263"), (96, "Dynamic(96)"), (20, "Unknown(20)")]
)
def test_codec_names(payload_type, name):
    assert codec_name(rtp(payload_type | 0x80)) == name


@implementer(IForwarder)
class RecordingForwarder:
    """A kernel forwarder stand-in: remembers offloads, reports fixed counters."""

    name = "kernel"
    keeps_entries = True

    def __init__(self):
        self.offloaded = []
        self.removed = []
        self.entries = {}
        self.on_gone = None

    def offload(self, owner, flow):
        self.entries[owner] = flow
        self.offloaded.append(owner.kind)
        return True

    def remove(self, owner):
        self.removed.append(owner.kind)
        del self.entries[owner]
        return 10, 2000, 10, 2000  # what the real one reads from the entry as it goes

    def counters(self, owner):
        return (10, 2000, 10, 2000) if owner in self.entries else None

    def checkpoint(self, owner):
        return None

    def time_out(self, owner, timeout_wait=120):
        """The kernel drops the entry by itself (no packets for ``timeout_wait`` s)."""
        del self.entries[owner]
        self.on_gone(owner, (0, 0, 0, 0), timeout_wait)


def established(relay):
    relay.call()
    relay.socket(40000).deliver(rtp(0), CALLER_NAT)
    relay.socket(40002).deliver(rtp(8), CALLEE_NAT)
    return relay.manager.sessions[("c1", "ft")].streams[0]


def test_userspace_idle_media_expires_like_a_kernel_entry():
    relay = Relay()
    relay.manager.idle_timeout = 120
    stream = established(relay)
    for _ in range(30):  # media keeps flowing: never idle
        relay.clock.advance(5)
        relay.socket(40000).deliver(rtp(0), CALLER_NAT)
        relay.manager.check_idle()
    assert stream.status == "active"
    for _ in range(23):
        relay.clock.advance(5)
        relay.manager.check_idle()
    assert stream.status == "active"  # 115 s of silence
    relay.clock.advance(5)
    relay.manager.check_idle()
    assert stream.status == "conntrack timeout" and stream.timeout_wait == 120
    (stats,) = relay.expired
    assert stats["streams"][0]["status"] == "conntrack timeout"


def test_held_stream_is_not_expired_for_silence():
    relay = Relay()
    relay.manager.idle_timeout = 10
    stream = established(relay)
    relay.update(cseq=2, media="audio:0.0.0.0:6000:sendrecv:ice=no")
    relay.update(kind="reply", cseq=2, to_tag="tt", media="audio:198.51.100.20:7000:recvonly:ice=no")
    assert stream.status == "on hold"
    for _ in range(10):
        relay.clock.advance(5)
        relay.manager.check_idle()
    assert stream.status == "on hold"


def test_kernel_entry_offloaded_after_first_packets_and_counted():
    relay = Relay()
    forwarder = relay.manager.forwarder = RecordingForwarder()
    stream = established(relay)
    assert forwarder.offloaded == ["rtp"]
    # the packet that completed learning was sent by userspace before the entry appeared
    assert relay.socket(40000).sent == [(rtp(8), CALLER_NAT)]
    stats = relay.remove()
    (counted,) = stats["streams"]
    assert counted["caller_packets"] == 0 + 10 and counted["callee_packets"] == 1 + 10
    assert forwarder.removed == ["rtp"] and stream.rtp.path != "kernel" and not forwarder.entries


def test_kernel_entry_timeout_expires_the_stream_but_not_on_hold():
    relay = Relay()
    forwarder = relay.manager.forwarder = RecordingForwarder()
    stream = established(relay)
    forwarder.time_out(stream.rtp)
    assert stream.status == "conntrack timeout" and stream.timeout_wait == 120

    relay = Relay()
    forwarder = relay.manager.forwarder = RecordingForwarder()
    stream = established(relay)
    relay.update(cseq=2, media="audio:192.0.2.10:6000:sendonly:ice=no")
    relay.update(kind="reply", cseq=2, to_tag="tt", media="audio:198.51.100.20:7000:recvonly:ice=no")
    forwarder.time_out(stream.rtp)
    assert stream.status == "on hold" and stream.rtp.path == "lapsed"
    # media resumes: back to the kernel
    relay.socket(40000).deliver(rtp(0), CALLER_NAT)
    assert forwarder.offloaded == ["rtp", "rtp"]


def test_empty_and_odd_datagrams_are_harmless():
    relay = Relay()
    established(relay)
    for odd in (b"", b"\x00", b"\x80"):
        relay.socket(40000).deliver(odd, CALLER_NAT)
    # forwarded like any other packet from the latched caller; nothing raised
    assert [data for data, _ in relay.socket(40002).sent][-3:] == [b"", b"\x00", b"\x80"]


def test_lost_destroy_events_are_made_up_for():
    """A conntrack event overflow: entries that vanished meanwhile still end their streams."""
    from mediaproxy.relay.plane.conntrack import Counters, Flow
    from mediaproxy.relay.plane.kernel import KernelForwarder

    class Table:
        mark = 1

        def __init__(self):
            self.entries = {}

        def create(self, flow, timeout):
            self.entries[flow.key] = Counters()

        def snapshot(self):
            return dict(self.entries)

    relay = Relay()
    table = Table()
    relay.manager.forwarder = KernelForwarder(relay.clock, table, 120)
    stream = established(relay)
    assert stream.rtp.path == "kernel" and isinstance(relay.manager.forwarder.entries[stream.rtp], Flow)
    relay.manager.forwarder.reconcile()
    assert stream.status == "active"  # still there: nothing happens
    table.entries.clear()  # the kernel dropped it; its DESTROY event was lost
    relay.manager.forwarder.reconcile()
    assert stream.status == "conntrack timeout" and stream.rtp not in relay.manager.forwarder.entries


# -- hostile peers: latching that a blind attacker cannot win, a bounded STUN queue


ATTACKER = ("203.0.113.66", 5555)


def test_a_source_that_fits_the_sdp_takes_a_stream_back_from_an_earlier_stranger():
    relay = Relay()
    relay.call()
    caller_side, callee_side = relay.socket(40000), relay.socket(40002)
    # the attacker sprays the port before the caller speaks and is latched first, provisionally:
    # it fits nothing signalling said, so it is sent nothing (the caller's TEST-NET SDP address is
    # not routable either, so the callee's packet is dropped)
    caller_side.deliver(rtp(0), ATTACKER)
    callee_side.deliver(rtp(8), CALLEE_SDP)
    assert caller_side.sent == []
    # the caller's packets come from its SDP address: they take the latch over for good
    relay.clock.advance(30)
    caller_side.deliver(rtp(0), CALLER_SDP)
    assert callee_side.sent[-1] == (rtp(0), CALLEE_SDP)
    callee_side.deliver(rtp(8), CALLEE_SDP)
    assert caller_side.sent[-1] == (rtp(8), CALLER_SDP)
    # an exact fit is final: the socket takes the caller's packets alone, the kernel drops the rest
    assert caller_side.peer == CALLER_SDP and callee_side.peer == CALLEE_SDP
    caller_side.deliver(rtp(0), ATTACKER)
    assert len(callee_side.sent) == 1
    assert reports.statistics(relay.manager)[0]["streams"][0]["caller_remote"] == "192.0.2.10:6000"


def test_a_natted_party_is_recognised_by_its_signalling_address():
    relay = Relay()
    relay.update(media="audio:10.0.0.5:6000:sendrecv", signaling_ip="192.0.2.99")  # the caller's NAT
    relay.update(kind="reply", to_tag="tt", media="audio:10.1.1.1:7000:sendrecv", signaling_ip="198.51.100.99")
    caller_side, callee_side = relay.socket(40000), relay.socket(40002)
    caller_side.deliver(rtp(0), ATTACKER)
    caller_side.deliver(rtp(0), CALLER_NAT)  # same IP as the caller's SIP, another port: level 1
    callee_side.deliver(rtp(8), CALLEE_NAT)
    assert caller_side.sent == [(rtp(8), CALLER_NAT)]
    # later strangers never win (refused and counted); a better fit (its SDP address) only within latch_window
    caller_side.deliver(rtp(0), ATTACKER)
    assert relay.manager.refusals.counts["latch_refused"] == 1 and caller_side.peer is None
    relay.clock.advance(relay.manager.policy.latch_window + 1)
    relay.manager.check_idle()  # past the window the latches are final: each socket takes its party alone
    assert caller_side.peer == CALLER_NAT and callee_side.peer == CALLEE_NAT
    caller_side.deliver(rtp(0), ATTACKER)
    caller_side.deliver(rtp(0), ("10.0.0.5", 6000))
    assert reports.statistics(relay.manager)[0]["streams"][0]["caller_remote"] == "192.0.2.99:30000"
    assert relay.manager.refusals.counts["latch_refused"] == 1  # the kernel dropped them: nothing to refuse


def test_a_stranger_among_strangers_keeps_first_come_rules_and_is_heard_after_latch_window():
    relay = Relay()
    # the proxy saw both parties' SIP from elsewhere (an SBC, say): their media fits nothing
    relay.update(media="audio:192.0.2.10:6000:sendrecv", signaling_ip="127.0.0.1")
    relay.update(kind="reply", to_tag="tt", media="audio:198.51.100.20:7000:sendrecv", signaling_ip="127.0.0.1")
    caller_side, callee_side = relay.socket(40000), relay.socket(40002)
    caller_side.deliver(rtp(0), CALLER_NAT)  # fits nothing signalling said, like the attacker
    caller_side.deliver(rtp(0), ATTACKER)
    assert relay.manager.refusals.counts["latch_refused"] == 1
    callee_side.deliver(rtp(8), CALLEE_NAT)
    # provisional: nothing goes to the caller's NAT (nor to its unroutable SDP address) yet
    assert caller_side.sent == [] and callee_side.sent == []
    relay.clock.advance(relay.manager.policy.latch_window + 1)
    relay.manager.check_idle()
    assert caller_side.peer is None  # never final: a source that fits may still take it
    # no better source came within latch_window: each is its party, and hears the other
    callee_side.deliver(rtp(8), CALLEE_NAT)
    caller_side.deliver(rtp(0), CALLER_NAT)
    assert caller_side.sent == [(rtp(8), CALLER_NAT)] and callee_side.sent == [(rtp(0), CALLEE_NAT)]


def test_the_kernel_entry_waits_for_the_real_party_after_a_stranger():
    relay = Relay()
    forwarder = RecordingForwarder()
    relay.manager.forwarder = forwarder
    relay.call()
    relay.socket(40000).deliver(rtp(0), ATTACKER)
    relay.socket(40002).deliver(rtp(8), CALLEE_SDP)
    # a provisional latch never reaches the kernel: its entry would forward to the stranger
    assert forwarder.offloaded == []
    relay.socket(40000).deliver(rtp(0), CALLER_SDP)
    assert forwarder.removed == [] and forwarder.offloaded == ["rtp"]
    assert reports.statistics(relay.manager)[0]["streams"][0]["caller_remote"] == "192.0.2.10:6000"


def test_stun_queue_is_bounded_in_packets_and_bytes_and_cleared():
    relay = Relay(stun_queue_packets=4, stun_queue_bytes=1000)
    relay.call(caller_media="audio:192.0.2.10:6000:sendrecv:ice=yes", callee_media="audio:198.51.100.20:7000:sendrecv:ice=yes")
    big = stun_binding_request() + b"\x00" * 280
    for _ in range(1000):
        relay.socket(40000).deliver(big, CALLER_NAT)
    side = relay.manager.sessions[("c1", "ft")].streams[0].rtp.callee
    assert len(side.stun_queue) == 3 and relay.manager.refusals.counts["stun_queue_full"] == 997
    small = stun_binding_request()
    for _ in range(10):
        relay.socket(40000).deliver(small, CALLER_NAT)
    assert len(side.stun_queue) == 4
    # the callee speaks: what waited goes to it, and the queue is gone
    relay.socket(40002).deliver(small, CALLEE_NAT)
    assert len(relay.socket(40002).sent) == 4 and side.stun_queue is None
    # an expiring RTCP side forgets its queue with its address
    rtcp = relay.manager.sessions[("c1", "ft")].streams[0].rtcp
    relay.socket(40001).deliver(small, ("192.0.2.99", 30001))
    assert rtcp.callee.stun_queue
    rtcp.lapse("conntrack timeout", 60)
    assert rtcp.callee.stun_queue is None


def test_ports_are_handed_out_at_random_and_cool_down_after_release():
    from mediaproxy.relay.plane.ports import PortPool as Pool

    pool = Pool(PortRange(40000, 40400))
    first = [pool.allocate(lambda port: port)[0] for _ in range(20)]
    assert first != sorted(first) and len(set(first)) == 20 and all(port % 2 == 0 for port in first)
    for port in first:
        pool.release(port)
    again = {pool.allocate(lambda port: port)[0] for _ in range(150)}
    assert not again & set(first)  # 180 younger pairs than these were free; they wait
    assert len(pool.in_use) == 150 and all(port in pool.in_use for port in again)
    assert not any(port in pool.in_use for port in (*first, 40001, 39998, 40400, next(iter(again)) + 1))
    pool.release(next(iter(again)))
    pool.release(next(iter(again)))  # twice: nothing more happens
    assert len(pool.in_use) == 149 and next(iter(again)) not in pool.in_use


def test_listing_pages_from_a_serial_and_finds_one_calls_sessions():
    relay = Relay()
    for number in range(6):
        relay.update(call_id=f"c{number}")
    relay.update(call_id="c2", from_tag="forked")  # a second session of one call
    relay.remove("c1", "ft", "")
    relay.remove("c4", "ft", "")

    def listed(position, call_id=None):
        return [(*session.key, session.serial) for session in relay.manager.registry.listing(position, call_id)]

    everything = listed(0)
    assert [entry[:2] for entry in everything] == [("c0", "ft"), ("c2", "ft"), ("c3", "ft"), ("c5", "ft"), ("c2", "forked")]
    assert [serial for *_, serial in everything] == sorted(serial for *_, serial in everything)
    serials = [serial for *_, serial in everything]
    assert listed(serials[2]) == everything[2:]
    assert listed(serials[3] - 1) == everything[3:]  # c4's serial, gone: the page starts at the next one
    assert listed(serials[-1] + 1) == []
    assert listed(0, "c2") == [everything[1], everything[4]] and listed(serials[2], "c2") == [everything[4]]
    assert listed(0, "c1") == [] and listed(0, "nobody") == []
    relay.remove("c2", "ft", "")  # one of a call's two sessions ends: the other is still found
    assert listed(0, "c2") == [everything[4]]
    relay.update(call_id="c2", from_tag="third")
    assert [entry[:2] for entry in listed(0, "c2")] == [("c2", "forked"), ("c2", "third")]
    relay.remove("c2", "forked", "")
    relay.remove("c2", "third", "")
    assert listed(0, "c2") == []


def test_metrics_count_paths_traffic_endings_and_ports():
    relay = Relay()
    relay.call()
    relay.update(call_id="c2")  # offered, not answered: learning
    metrics = reports.metrics(relay.manager)
    assert metrics["streams"] == {"learning": 2, "userspace": 0, "kernel": 0, "on hold": 0}
    assert metrics["ports"]["used"] == 4  # two pairs a stream, from the offer on
    caller_side, callee_side = relay.socket(40000), relay.socket(40002)
    caller_side.deliver(rtp(0), CALLER_NAT)
    callee_side.deliver(rtp(8), CALLEE_NAT)
    caller_side.deliver(rtp(0), CALLER_NAT)
    metrics = reports.metrics(relay.manager)
    # the caller's first packet had nowhere to go yet
    assert metrics["streams"]["userspace"] == 1 and metrics["packets_relayed"] == 2
    assert metrics["bytes_relayed"] == 2 * (172 + 28)
    # the listing says each live stream's path; a record of an ended session does not
    assert [[stream.get("path") for stream in record["streams"]] for record in reports.statistics(relay.manager)] == [["userspace"], []]
    assert "path" not in relay.remove()["streams"][0]
    relay.clock.advance(120)  # c2 never gets media: no-traffic timeout
    metrics = reports.metrics(relay.manager)
    assert metrics["sessions_ended"] == {"bye": 1, "no-traffic timeout": 1}
    assert metrics["packets_relayed"] == 2  # the ended sessions' counts stay in the totals
    assert metrics["ports"]["used"] == 0 and metrics["ports"]["free"] == relay.manager.pool.total


def test_one_info_line_per_session_event():
    relay = Relay()
    with logged() as logs:
        relay.call()
        relay.socket(40000).deliver(rtp(0), CALLER_NAT)
        relay.socket(40002).deliver(rtp(8), CALLEE_NAT)
        relay.socket(40000).deliver(rtp(0), CALLER_NAT)
        relay.clock.advance(3)
        relay.remove()
        relay.update(call_id="c2")
        relay.clock.advance(120)
    assert logs.at(LogLevel.info) == [
        "New session c1 (1 streams)",
        "Session c1 answered (1 streams)",
        "rtp of audio stream of c1 (40000/40002): learning → userspace",
        "Session c1 ended (bye) after 3s; caller sent 1 packets (200 bytes), callee 1 packets (200 bytes)",
        "New session c2 (1 streams)",
        "audio stream of c2 (40004/40006) ended: no-traffic timeout",
        "Session c2 expired (no-traffic timeout) after 0s; caller sent 0 packets (0 bytes), callee 0 packets (0 bytes)",
    ]


def test_the_username_is_the_signalled_one_or_the_from_uris_user():
    relay = Relay()
    relay.call()
    relay.update(call_id="c2", signaling_ip='{"signaling_ip": "127.0.0.1", "username": "carol@example.org"}')
    usernames = {record["call_id"]: record["username"] for record in reports.statistics(relay.manager)}
    assert usernames == {"c1": "alice", "c2": "carol@example.org"}


class CheckpointedForwarder(RecordingForwarder):
    """Userspace workers' stand-in: counts that grow, handed over at each checkpoint."""

    name = "userspace"
    keeps_entries = False

    def __init__(self):
        super().__init__()
        self.live = {}

    def offload(self, owner, flow):
        self.live[owner] = (0, 0, 0, 0)
        return super().offload(owner, flow)

    def counters(self, owner):
        return self.live.get(owner)

    def checkpoint(self, owner):
        moved, self.live[owner] = self.live[owner], (0, 0, 0, 0)
        return moved

    def remove(self, owner):
        self.removed.append(owner.kind)
        del self.entries[owner]
        return self.live.pop(owner)


def test_worker_counts_are_kept_every_interval_and_at_a_stop_and_shown_as_userspace(tmp_path):
    relay = Relay()
    forwarder = relay.manager.forwarder = CheckpointedForwarder()
    relay.manager.keeping.state = state = statefile.StateFile(
        str(tmp_path / "sessions"), "sessions", 1, relay.clock, "the sessions", key_text=serialize.key_text
    )
    state.open(lambda: {}, lambda: 0)
    stream = established(relay)
    owner = stream.rtp
    forwarder.live[owner] = (40, 8000, 30, 6000)
    record = reports.session_statistics(relay.manager, next(iter(relay.manager.sessions.values())))
    assert record.streams[0].path == "userspace"  # not "kernel": the workers forward in userspace
    assert reports.metrics(relay.manager)["streams"]["userspace"] == 1
    relay.manager.keeping.keep_counters()
    assert (owner.caller.kernel_packets, owner.callee.kernel_packets) == (40, 30)  # folded into what is kept
    (kept,) = statefile.StateFile(str(tmp_path / "sessions"), "sessions", 1, relay.clock, "the sessions").load().values()
    assert serialize.named(kept)["streams"][0]["rtp"]["caller"]["kernel_packets"] == 40
    forwarder.live[owner] = (5, 1000, 5, 1000)
    relay.manager.suspend()  # a stop that keeps the calls: the workers end, their counts go into the state
    assert (owner.caller.kernel_packets, owner.callee.kernel_packets) == (45, 35) and forwarder.removed == ["rtp"]


def test_an_asymmetric_party_gets_media_at_its_sdp_address_and_stays_in_userspace():
    """rtpproxy's ``A``: the party sends from one port and receives at the one its SDP names."""
    relay = Relay()
    forwarder = relay.manager.forwarder = RecordingForwarder()
    relay.call(caller_media="audio:192.0.2.10:6000:sendrecv:asymmetric=yes")
    caller_side, callee_side = relay.socket(40000), relay.socket(40002)
    sends_from = ("192.0.2.10", 6100)
    caller_side.deliver(rtp(0), sends_from)
    callee_side.deliver(rtp(8), CALLEE_NAT)
    caller_side.deliver(rtp(0), sends_from)
    callee_side.deliver(rtp(8), CALLEE_NAT)
    assert caller_side.sent == [(rtp(8), ("192.0.2.10", 6000))] * 2  # the SDP address, not where it sends from
    assert callee_side.sent == [(rtp(0), CALLEE_NAT)]  # the first came before the callee was learnt
    relay.socket(40003).deliver(b"\x80\xc8" + b"\x00" * 26, CALLEE_NAT)  # RTCP: to the SDP port + 1
    assert relay.socket(40001).sent == [(b"\x80\xc8" + b"\x00" * 26, ("192.0.2.10", 6001))]
    assert forwarder.offloaded == []  # a kernel entry would send to where it sends from
    (session,) = relay.manager.sessions.values()
    assert session.streams[0].rtp.path == "userspace"  # both known: no longer learning
    # kept and restored with the session (a relay restart)
    (session,) = relay.manager.sessions.values()
    restored = serialize.load_session(json.loads(json.dumps(serialize.dump_session(session))), 2, session.streams[0].policy, relay.clock)
    assert restored.streams[0].rtp.caller.asymmetric and not restored.streams[0].rtp.callee.asymmetric
    stats = relay.remove()
    assert stats["streams"][0]["caller_remote"] == "192.0.2.10:6100" and stats["streams"][0]["caller_packets"] == 1


def test_a_reoffer_without_asymmetric_latches_the_party_again_as_usual():
    relay = Relay()
    relay.call(caller_media="audio:192.0.2.10:6000:sendrecv:asymmetric=yes")
    relay.update(cseq=2, media="audio:192.0.2.10:6000:sendrecv")
    relay.update(kind="reply", cseq=2, to_tag="tt", media="audio:198.51.100.20:7000:sendrecv")
    relay.socket(40000).deliver(rtp(0), ("192.0.2.10", 6100))
    relay.socket(40002).deliver(rtp(8), CALLEE_NAT)
    assert relay.socket(40000).sent == [(rtp(8), ("192.0.2.10", 6100))]


def test_a_kept_session_names_every_field_the_models_have():
    """The positional form keeps fields by their place: one the model gains must be listed, or it
    is not kept."""
    relay = Relay()
    relay.call()
    (session,) = relay.manager.sessions.values()
    state = serialize.named(json.loads(json.dumps(serialize.dump_session(session))))
    assert set(state["signaling"]) == {field.name for field in dataclasses.fields(SignalingInfo)}
    stream = session.streams[0]
    assert set(state["streams"][0]["parties"]["caller"]) == set(type(stream.party("caller")).__slots__)
    side = state["streams"][0]["rtp"]["caller"]
    assert side["remote"] is None and side["timer_reason"] == "no-traffic timeout" and side["codec"] is None
    assert state["streams"][0]["ports"] == [stream.caller_port, stream.callee_port]
    # every side field is kept under its own name, each a different value here
    model = stream.rtcp.callee
    model.remote, model.in_use, model.got_rtp, model.got_stun_probing, model.codec = ("192.0.2.7", 7001), True, True, True, "PCMU"
    model.set_timer(123.5, 30, "on hold timeout")
    model.packets, model.bytes, model.latch, model.kernel = 5, 6, (2, 99.5), (7, 8)
    kept = serialize.named(json.loads(json.dumps(serialize.dump_session(session))))["streams"][0]["rtcp"]["callee"]
    assert kept == {"remote": ["192.0.2.7", 7001], **{name: getattr(model, name) for name in serialize._SIDE_FIELDS}}
    assert len({json.dumps(value) for value in kept.values()}) == len(kept) - 2  # only the flags repeat (True)


def test_the_allocator_can_be_asked_to_give_memory_back():
    """glibc's malloc_trim is found (the statistics pulls' high-water mark is given back with it)."""
    from mediaproxy.runtime import heap

    assert heap._trim is not None
    heap.give_back()


def test_shared_values_are_held_once_and_the_table_is_bounded():
    from mediaproxy.relay.model.shared import SharedValues

    shared = SharedValues(2)
    first = "".join(["user-", "agent"])  # equal texts that are different objects
    assert shared(first) is first and shared("".join(["user", "-agent"])) is first
    assert shared((1, 2)) == (1, 2) and len(shared) == 2
    late = "".join(["la", "te"])
    assert shared(late) is late and shared("".join(["l", "ate"])) is not late and len(shared) == 2  # full: not shared


def test_a_call_keeps_only_its_latest_offers():
    """A re-INVITE adds an offer: a dialog that never stops re-inviting must not grow without end."""
    relay = Relay()
    relay.call()
    for cseq in range(2, 3 * MAX_OFFERS):
        assert relay.update(cseq=cseq) == f"{RELAY} 40002"
        relay.update(kind="reply", cseq=cseq, to_tag="tt", media="audio:198.51.100.20:7000:sendrecv:ice=no")
    (session,) = relay.manager.sessions.values()
    assert len(session.offers) == MAX_OFFERS and session.offers[-1][0] == (3 * MAX_OFFERS - 1, 0)
    assert len(session.streams) == 1 and session.streams[0].alive  # one stream, offered again each time
    # a reply to an offer long gone has nothing to answer for
    assert relay.update(kind="reply", cseq=2, to_tag="tt", media=None) == UpdateReply(None).format()
    with pytest.raises(UpdateError, match="no offer"):
        relay.update(kind="reply", cseq=2, to_tag="tt", media="audio:198.51.100.20:7000:sendrecv:ice=no")


def test_a_call_that_keeps_moving_its_media_is_refused_new_streams_past_the_bound():
    """Each answered stream stays for the record, so a dialog re-inviting to new ports for ever is
    refused a new stream past MAX_STREAMS: the update is an error, the call goes on, no port leaks."""
    relay = Relay()
    relay.call()
    for cseq in range(2, MAX_STREAMS + 1):
        relay.update(cseq=cseq, media=f"audio:192.0.2.10:{6000 + 2 * cseq}:sendrecv:ice=no")
        relay.update(kind="reply", cseq=cseq, to_tag="tt", media="audio:198.51.100.20:7000:sendrecv:ice=no")
    (session,) = relay.manager.sessions.values()
    assert len(session.streams) == MAX_STREAMS and all(stream.start_time is not None for stream in session.streams)
    free = relay.free_pairs
    with pytest.raises(UpdateError, match=f"opened {MAX_STREAMS} streams"):
        relay.update(cseq=MAX_STREAMS + 1, media="audio:192.0.2.10:5000:sendrecv:ice=no")
    assert relay.free_pairs == free and len(session.streams) == MAX_STREAMS
    # the media it has is still relayed and offered again as it stands
    (alive,) = session.alive_streams()
    port = alive.local("callee")[1]  # what the callee is told
    assert relay.update(cseq=MAX_STREAMS + 2, media=f"audio:192.0.2.10:{6000 + 2 * MAX_STREAMS}:sendrecv:ice=no") == f"{RELAY} {port}"
    assert len(relay.remove()["streams"]) == MAX_STREAMS  # every answered one in the record


def test_streams_of_offers_never_answered_are_let_go_once_forgotten():
    """A re-INVITE that is never answered opens a stream no record shows: once its offer is out of
    the remembered ones, the session holds it no longer (a peer re-offering new ports without end)."""
    relay = Relay()
    relay.call()
    for cseq in range(2, 4 * MAX_OFFERS):
        relay.update(cseq=cseq, media=f"audio:192.0.2.10:{6000 + 2 * cseq}:sendrecv:ice=no")
    (session,) = relay.manager.sessions.values()
    assert len(session.offers) == MAX_OFFERS
    named = {id(stream) for _, streams in session.offers for stream in streams}
    assert {id(stream) for stream in session.streams} == named | {id(session.streams[0])}
    assert session.streams[0].start_time is not None  # the answered one stays, for the record
    assert len(session.streams) == MAX_OFFERS + 1
    # what is kept still loads: every offer's streams are among the session's
    kept = json.loads(json.dumps(serialize.dump_session(session)))
    restored = serialize.load_session(kept, 2, session.streams[0].policy, relay.clock)
    assert len(restored.streams) == len(session.streams) and len(restored.offers) == MAX_OFFERS

"""The relay's UDP sockets on loopback: fixed to the latched party (connected) and opened again."""

import select
import socket

import pytest

from harness import loopback_socket
from mediaproxy.relay.plane.udp import UDPBinder


class Reactor:
    """The reactor as the socket poller sees it: a reader is added and removed."""

    def addReader(self, reader):
        pass

    def removeReader(self, reader):
        pass


class Receiver:
    def __init__(self):
        self.packets = []

    def received(self, data, source):
        self.packets.append((data, source))


@pytest.fixture
def relay_port():
    """(port, the RTP endpoint of a relay port pair on loopback with a Receiver), closed afterwards."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1] & ~1
        probe.close()
        try:
            rtp, rtcp = UDPBinder(Reactor())("127.0.0.1", port)
        except OSError:
            continue
        rtp.receiver = Receiver()
        yield port, rtp
        rtp.close()
        rtcp.close()
        return
    pytest.fail("no free port pair on loopback")


@pytest.fixture
def peers():
    """(the party, a stranger): two loopback sockets, closed afterwards."""
    party, stranger = loopback_socket(), loopback_socket()
    yield party, stranger
    party.close()
    stranger.close()


def read(endpoint, until):
    """Read what is waiting (the poller's work) until ``until`` packets came, or a second passed."""
    poller = select.poll()
    poller.register(endpoint.fileno(), select.POLLIN)
    while len(endpoint.receiver.packets) < until and poller.poll(1000):
        endpoint.doRead()
    return endpoint.receiver.packets


def test_a_fixed_socket_takes_its_party_alone_and_every_source_once_open_again(relay_port, peers):
    port, rtp = relay_port
    party, stranger = peers
    rtp.fix(party.getsockname())
    assert rtp.peer == party.getsockname()
    stranger.sendto(b"stray", ("127.0.0.1", port))
    party.sendto(b"media", ("127.0.0.1", port))
    assert read(rtp, 1) == [(b"media", party.getsockname())]
    rtp.send(b"out", rtp.peer)  # connected: sent without an address
    assert party.recvfrom(100) == (b"out", ("127.0.0.1", port))
    rtp.send(b"elsewhere", stranger.getsockname())  # an address of its own still goes there
    assert stranger.recvfrom(100) == (b"elsewhere", ("127.0.0.1", port))
    rtp.unfix()
    assert rtp.peer is None and rtp.getsockname() == ("127.0.0.1", port)  # still bound to its port
    stranger.sendto(b"again", ("127.0.0.1", port))
    assert read(rtp, 2)[1] == (b"again", stranger.getsockname())


def test_what_was_queued_before_the_socket_was_fixed_is_read_with_its_own_source(relay_port, peers):
    """Connecting does not empty the socket: what a stranger sent before is still there and must
    not pass for the party's; once read to the end, the rest is the party's alone."""
    port, rtp = relay_port
    party, stranger = peers
    stranger.sendto(b"early stray", ("127.0.0.1", port))
    party.sendto(b"early media", ("127.0.0.1", port))
    poller = select.poll()
    poller.register(rtp.fileno(), select.POLLIN)
    assert poller.poll(1000)
    rtp.fix(party.getsockname())
    assert rtp.source is None  # not yet: something may be queued from before
    party.sendto(b"media", ("127.0.0.1", port))
    assert read(rtp, 3) == [
        (b"early stray", stranger.getsockname()),
        (b"early media", party.getsockname()),
        (b"media", party.getsockname()),
    ]
    rtp.doRead()  # nothing more: read to the end
    assert rtp.source == party.getsockname()
    stranger.sendto(b"stray", ("127.0.0.1", port))
    party.sendto(b"more", ("127.0.0.1", port))
    assert read(rtp, 4)[3] == (b"more", party.getsockname())


def test_a_packet_is_not_lost_to_an_icmp_error_reported_for_an_earlier_one(relay_port):
    """A connected socket reports a port unreachable at its next send, which it then does not
    send: the endpoint sends that packet again."""
    port, rtp = relay_port
    gone = loopback_socket()
    address = gone.getsockname()
    gone.close()
    rtp.fix(address)
    rtp.send(b"first", rtp.peer)  # nobody there: the kernel answers port unreachable
    poller = select.poll()
    poller.register(rtp.fileno(), select.POLLERR)
    assert poller.poll(1000), "no ICMP error reported"
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back.bind(address)  # the party listens again
    back.settimeout(2)
    rtp.send(b"second", rtp.peer)
    assert back.recvfrom(100) == (b"second", ("127.0.0.1", port))
    back.close()

"""The management interface's line framing, in memory: the same answers whatever the segmentation,
and nothing answered after quit."""

from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mediaproxy import __version__
from mediaproxy.net.ratelimit import Refusals
from mediaproxy.plugins.management import ManagementProtocol


def connection() -> tuple[ManagementProtocol, StringTransport]:
    clock = Clock()
    plugin = SimpleNamespace(
        verifier=None,
        connections=set(),
        config=SimpleNamespace(management_idle_timeout=600),
        context=SimpleNamespace(reactor=clock),
        refusals=Refusals(clock),
        dispatcher=None,
    )
    client = ManagementProtocol(plugin)
    transport = StringTransport()
    client.makeConnection(transport)
    return client, transport


def answers(*chunks: bytes) -> tuple[list[str], bool]:
    """What a client sending ``chunks`` (one write each) is answered, and whether it was closed."""
    client, transport = connection()
    for chunk in chunks:
        if transport.disconnecting:
            break
        client.dataReceived(chunk)
    return transport.value().decode().split("\r\n")[:-1], transport.disconnecting


EXACTLY_AT_THE_LIMIT = b"y" * 1024 + b"\r\nversion\r\n"
ONE_OVER = b"y" * 1025 + b"\r\nversion\r\n"
QUIT_AND_MORE = b"quit\r\n" + b"z" * 2000 + b"\r\nversion\r\n"


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        # a 1,024-byte line is a line (an unknown command); the connection goes on
        (EXACTLY_AT_THE_LIMIT, (["error", __version__], False)),
        # one byte more is refused and the connection closed: version is not answered
        (ONE_OVER, (["error"], True)),
        # after quit nothing is answered, however long what follows
        (QUIT_AND_MORE, ([], True)),
        (b"version\nquit\nversion\n", ([__version__], True)),
    ],
    ids=["at-the-limit", "one-over", "quit-then-more", "lf-only"],
)
def test_the_same_answers_however_the_bytes_arrive(stream, expected):
    assert answers(stream) == expected
    for split in range(1, len(stream)):
        assert answers(stream[:split], stream[split:]) == expected, f"split at {split}"


def test_every_byte_on_its_own_gets_the_same_answers():
    for stream, expected in ((EXACTLY_AT_THE_LIMIT, ["error", __version__]), (QUIT_AND_MORE, [])):
        assert answers(*(stream[index : index + 1] for index in range(len(stream))))[0] == expected

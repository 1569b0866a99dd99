"""What the session manager needs of the relay's edges; fakes in ``mediaproxy.testing`` provide the same."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IEndpoint(Interface):
    """One relay UDP socket."""

    receiver = Attribute(
        "what takes each datagram, or None: its ``received(data, source)`` returns an object with an "
        "``outbox`` when the packet queued events, which the endpoint then hands to its binder's ``sink``"
    )

    peer = Attribute("the address the socket takes datagrams from alone (``fix``), or None: from anywhere")

    def send(data: bytes, destination: tuple[str, int]) -> None:  # noqa: N805 - zope.interface declarations have no self
        """Send one datagram; a failure loses this one packet, as UDP would."""

    def fix(peer: tuple[str, int]) -> None:  # noqa: N805
        """Take datagrams from ``peer`` alone (the kernel drops the rest); where that cannot be
        done (no route), nothing changes."""

    def unfix() -> None:
        """Take datagrams from anywhere again."""

    def deliver(data: bytes, source: tuple[str, int]) -> None:  # noqa: N805
        """A datagram for this socket that another process read: to the receiver, as if read here."""

    def close() -> None:
        """Close the socket; nothing more is received."""


class IBinder(Interface):
    """Opens the sockets of a port pair."""

    sink = Attribute("callable(owner) told when a received packet queued events in ``owner.outbox``")

    def __call__(ip: str, port: int) -> tuple:  # noqa: N805
        """The RTP (``port``) and RTCP (``port + 1``) IEndpoints; OSError when either cannot be bound."""


class IPortPool(Interface):
    """The even ports of ``port_range``, handed out at random and cooled down after use."""

    def allocate(bind) -> tuple:  # noqa: N805
        """(port, bind(port)) for a free pair; PortsExhausted when none binds."""

    def reserve(ports) -> None:  # noqa: N805
        """Set aside the pairs the sessions kept from the last run will claim."""

    def claim(port: int, bind) -> tuple:  # noqa: N805
        """The same for one given port (a session kept from the last run)."""

    def unreserve() -> None:
        """Free again what was reserved and not claimed."""

    def release(port: int) -> None:  # noqa: N805
        """The pair is free again (after a cool-down)."""


class IForwarder(Interface):
    """Forwards substreams outside the relay process (the kernel, or worker processes), keyed by
    an owner: the substream, opaque to the kernel forwarder; the workers take its sides' sockets.

    Counters are (caller packets, caller bytes, callee packets, callee bytes) in IP bytes.
    """

    name = Attribute("'kernel' or 'userspace': the path an operator is shown for what it forwards")
    keeps_entries = Attribute("whether what it forwards goes on while the relay is away (kernel entries do, workers do not)")
    on_gone = Attribute("callable(owner, counters, timeout_wait), told when an entry timed out by itself")

    def start(keep: frozenset) -> None:  # noqa: N805
        """Begin; entries of a previous run are deleted but those whose keys are in ``keep``."""

    def stop(keep_entries: bool) -> None:  # noqa: N805
        """End; with ``keep_entries`` the entries stay (forwarding on) for the next start."""

    def offload(owner: object, flow: object) -> bool:  # noqa: N805
        """Forward ``flow`` (a plane.conntrack.Flow) for ``owner``; False when it stays in userspace."""

    def adopt(owner: object, flow: object) -> bool:  # noqa: N805
        """Take back an entry kept from the last run for ``flow``; False when it is gone."""

    def remove(owner: object) -> tuple | None:  # noqa: N805
        """Delete ``owner``'s entry; its last counters, or None."""

    def counters(owner: object) -> tuple | None:  # noqa: N805
        """The live counters of ``owner``'s entry, or None."""

    def checkpoint(owner: object) -> tuple | None:  # noqa: N805
        """What was counted for ``owner`` since the last checkpoint, handed over for the relay to
        keep (a forwarder whose counts end with the relay: workers), or None (the kernel's
        entries outlive the relay and keep their own counts)."""

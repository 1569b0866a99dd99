"""What the operator's configuration says about relaying media, frozen at start."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mediaproxy.relay.model.packets import Routability


@dataclass(frozen=True)
class MediaPolicy:
    """The options of ``[Relay]`` the model applies (their meaning: ``config.ini.sample``)."""

    stream_timeout: int  # no media from a side for this long ends the stream
    on_hold_timeout: int  # a held stream ends after this long
    transmit_every: int  # forward 1 packet in N in userspace (the original's test option)
    stun_queue_packets: int  # STUN waiting for a side's address, per side
    stun_queue_bytes: int
    latch_window: int  # seconds in which a better-fitting source may take a side over
    routable: Callable[[str], bool]  # whether media may go to an SDP address before learning
    advertised_ip: str | None

    @classmethod
    def from_config(cls, config) -> MediaPolicy:  # a configuration.RelayConfig
        return cls(
            stream_timeout=config.stream_timeout,
            on_hold_timeout=config.on_hold_timeout,
            transmit_every=config.userspace_transmit_every,
            stun_queue_packets=config.stun_queue_packets,
            stun_queue_bytes=config.stun_queue_bytes,
            latch_window=config.latch_window,
            routable=Routability(config.routable_private_ranges),
            advertised_ip=config.advertised_ip,
        )

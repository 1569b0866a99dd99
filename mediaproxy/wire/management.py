"""The management interface's control commands: how many arguments each takes and how it is
used, for the dispatcher that answers them and for media-sessions that sends them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControlCommand:
    arguments: tuple[int, ...]  # the argument counts it accepts
    usage: str

    def accepts(self, arguments: list[str]) -> bool:
        return len(arguments) in self.arguments


CONTROL = {
    "terminate": ControlCommand((1,), "CALL_ID"),
    "loglevel": ControlCommand((1, 2), "LEVEL [RELAY_IP]"),
    "drain": ControlCommand((1,), "RELAY_IP"),
    "undrain": ControlCommand((1,), "RELAY_IP"),
}

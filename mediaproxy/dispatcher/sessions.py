"""The dispatcher's call table: call_id → relay, dialog id, expire time and a remove in flight.

Every change is journalled as it happens (:mod:`mediaproxy.statefile`), so a dispatcher killed
at any moment loses no call; the snapshot file keeps the format of earlier versions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mediaproxy.dialogs import Dialog, DialogTags
from mediaproxy.runtime.log import Logger
from mediaproxy.statefile import StateFile

log = Logger(namespace="dispatcher.sessions")

STATE_FILE = "dispatcher_state"
STATE_VERSION = 1


# A call's phase: set up, then answered (its first answer logged; a 183 and the 200 after it are
# one answer), re-offered by a re-INVITE (whose answer gets a line of its own), or terminated
# by the operator (its session removed by the dispatcher, accounted as "terminated")
SET_UP, ANSWERED, REOFFERED, TERMINATED = "set up", "answered", "re-offered", "terminated"
PHASES = (SET_UP, ANSWERED, REOFFERED, TERMINATED)


@dataclass(slots=True)  # one per call: no per-instance dict
class CallEntry:
    relay_ip: str
    dialog_id: str | None = None
    expire_time: float | None = None
    removal: list[str] | None = None  # the header lines of a remove answered but not yet done by the relay
    rtpproxy: dict | None = None  # what the rtpproxy front end keeps of a call it set up (its CallMedia)
    # where the call is in its dialog (one of PHASES: shared strings, one slot a call)
    phase: str = field(default="set up", compare=False)
    # the number of the relay reports begun when it was set up (lastknown): not kept, as reports are not
    report: int = field(default=0, compare=False)

    def as_json(self) -> dict:
        """As journalled: a call of the mediaproxy module's in the format of earlier versions."""
        # by hand: dataclasses.asdict deep-copies what is encoded at once, a measurable part of a set-up
        item = {"relay_ip": self.relay_ip, "dialog_id": self.dialog_id, "expire_time": self.expire_time, "removal": self.removal}
        if self.rtpproxy is not None:
            item["rtpproxy"] = self.rtpproxy
        if self.phase == TERMINATED:
            item["end_reason"] = TERMINATED
        return item

    def dialog(self) -> Dialog | None:
        """What the proxy is to end: its dialog id, else the tags of an rtpproxy call whose
        parties both spoke (an unanswered call has no dialog to end)."""
        if self.dialog_id:
            return self.dialog_id
        tags = (self.rtpproxy or {}).get("tags")
        if isinstance(tags, list) and len(tags) == 2 and all(isinstance(tag, str) and tag for tag in tags):
            return DialogTags(*tags)
        return None

    @classmethod
    def from_json(cls, item: dict) -> CallEntry:
        removal = item.get("removal")
        return cls(
            str(item["relay_ip"]),
            _text_or_none(item.get("dialog_id")),
            _number_or_none(item.get("expire_time")),
            [str(line) for line in removal] if isinstance(removal, list) else None,
            item.get("rtpproxy") if isinstance(item.get("rtpproxy"), dict) else None,
            phase=TERMINATED if item.get("end_reason") == TERMINATED else SET_UP,
        )


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _number_or_none(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("expire_time is not a number")
    return float(value)


class CallTable:
    def __init__(self) -> None:
        self.entries: dict[str, CallEntry] = {}
        self.state: StateFile | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, call_id: str) -> bool:
        return call_id in self.entries

    def get(self, call_id: str) -> CallEntry | None:
        return self.entries.get(call_id)

    def set(self, call_id: str, entry: CallEntry) -> None:
        """Add or replace an entry; call it again after changing an entry, so the change is kept."""
        self.entries[call_id] = entry
        if self.state is not None:
            self.state.set(call_id, entry.as_json())

    def mark_expired(self, call_id: str, now: float) -> None:
        entry = self.entries.get(call_id)
        if entry is not None:
            entry.expire_time = now
            self.set(call_id, entry)

    def pop(self, call_id: str) -> CallEntry | None:
        entry = self.entries.pop(call_id, None)
        if entry is not None and self.state is not None:
            self.state.pop(call_id)
        return entry

    def of_relay(self, relay_ip: str) -> list[tuple[str, CallEntry]]:
        return [(call_id, entry) for call_id, entry in self.entries.items() if entry.relay_ip == relay_ip]

    def relay_ips(self) -> set[str]:
        return {entry.relay_ip for entry in self.entries.values()}

    def expired_before(self, deadline: float) -> list[str]:
        return [call_id for call_id, entry in self.entries.items() if entry.expire_time is not None and entry.expire_time < deadline]

    # -- kept across restarts and crashes

    def restore(self, state: StateFile) -> int:
        """Load what ``state`` kept and journal every change to it from now on; returns how many calls came back."""
        for call_id, item in state.load().items():
            try:
                self.entries[call_id] = CallEntry.from_json(item)
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                log.error("Cannot restore call {call_id}: {error}", call_id=call_id, error=error)
        self.state = state
        state.open(lambda: {call_id: entry.as_json() for call_id, entry in self.entries.items()}, lambda: len(self.entries))
        return len(self.entries)

    def close(self) -> None:
        if self.state is not None:
            self.state.close()
            self.state = None


def call_table_file(runtime_dir: str, clock) -> StateFile:
    return StateFile(os.path.join(runtime_dir, STATE_FILE), "sessions", STATE_VERSION, clock, "the call table")

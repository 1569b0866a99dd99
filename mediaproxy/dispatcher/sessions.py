"""The dispatcher's call table: call_id → relay, dialog id and expire time, kept across restarts."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from twisted.logger import Logger

log = Logger(namespace="dispatcher.sessions")

STATE_FILE = "dispatcher_state"
STATE_VERSION = 1


@dataclass
class CallEntry:
    relay_ip: str
    dialog_id: str | None = None
    expire_time: float | None = None


class CallTable:
    def __init__(self) -> None:
        self.entries: dict[str, CallEntry] = {}
        self.dirty = False

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, call_id: str) -> bool:
        return call_id in self.entries

    def get(self, call_id: str) -> CallEntry | None:
        return self.entries.get(call_id)

    def set(self, call_id: str, entry: CallEntry) -> None:
        self.entries[call_id] = entry
        self.dirty = True

    def mark_expired(self, call_id: str, now: float) -> None:
        entry = self.entries.get(call_id)
        if entry is not None:
            entry.expire_time = now
            self.dirty = True

    def pop(self, call_id: str) -> CallEntry | None:
        entry = self.entries.pop(call_id, None)
        if entry is not None:
            self.dirty = True
        return entry

    def of_relay(self, relay_ip: str) -> list[tuple[str, CallEntry]]:
        return [(call_id, entry) for call_id, entry in self.entries.items() if entry.relay_ip == relay_ip]

    def relay_ips(self) -> set[str]:
        return {entry.relay_ip for entry in self.entries.values()}

    def expired_before(self, deadline: float) -> list[str]:
        return [call_id for call_id, entry in self.entries.items() if entry.expire_time is not None and entry.expire_time < deadline]

    def save(self, path: str) -> None:
        """Write atomically: a crash mid-write leaves the previous state intact."""
        data = {"version": STATE_VERSION, "sessions": {call_id: asdict(entry) for call_id, entry in self.entries.items()}}
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(data, stream, separators=(",", ":"))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        self.dirty = False

    def load(self, path: str) -> int:
        """Restore entries from ``path``; a missing file is an empty table, a corrupt one is logged and set aside."""
        try:
            with open(path, encoding="utf-8") as stream:
                data = json.load(stream)
            sessions = data["sessions"]
            restored = {
                call_id: CallEntry(str(item["relay_ip"]), item.get("dialog_id"), item.get("expire_time"))
                for call_id, item in sessions.items()
            }
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            aside = f"{path}.corrupt"
            log.error(
                "Cannot restore the call table from {path} ({error}); moved it to {aside} and starting empty",
                path=path,
                error=error,
                aside=aside,
            )
            try:
                os.replace(path, aside)
            except OSError:
                pass
            return 0
        self.entries.update(restored)
        return len(restored)

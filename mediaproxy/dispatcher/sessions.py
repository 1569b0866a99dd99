"""The dispatcher's call table: call_id → relay, dialog id, expire time and a remove in flight.

Every change is appended to a journal as it happens, so a dispatcher killed at any moment loses
no call: the kernel keeps what was written even when the process dies at once, and an fsync
follows within ``SYNC_DELAY`` for the machine going down. The journal is folded into the
snapshot file (the format of earlier versions) when it grows past a few times the table.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from twisted.logger import Logger

log = Logger(namespace="dispatcher.sessions")

STATE_FILE = "dispatcher_state"
JOURNAL_SUFFIX = ".journal"
STATE_VERSION = 1
SYNC_DELAY = 0.05
MIN_COMPACT_LINES = 1000


@dataclass
class CallEntry:
    relay_ip: str
    dialog_id: str | None = None
    expire_time: float | None = None
    removal: list[str] | None = None  # the header lines of a remove answered but not yet done by the relay

    @classmethod
    def from_json(cls, item: dict) -> CallEntry:
        removal = item.get("removal")
        return cls(
            str(item["relay_ip"]),
            _text_or_none(item.get("dialog_id")),
            _number_or_none(item.get("expire_time")),
            [str(line) for line in removal] if isinstance(removal, list) else None,
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
        self.journal: Journal | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, call_id: str) -> bool:
        return call_id in self.entries

    def get(self, call_id: str) -> CallEntry | None:
        return self.entries.get(call_id)

    def set(self, call_id: str, entry: CallEntry) -> None:
        """Add or replace an entry; call it again after changing an entry, so the change is kept."""
        self.entries[call_id] = entry
        self._note({"set": call_id, "entry": asdict(entry)})

    def mark_expired(self, call_id: str, now: float) -> None:
        entry = self.entries.get(call_id)
        if entry is not None:
            entry.expire_time = now
            self.set(call_id, entry)

    def pop(self, call_id: str) -> CallEntry | None:
        entry = self.entries.pop(call_id, None)
        if entry is not None:
            self._note({"pop": call_id})
        return entry

    def _note(self, change: dict) -> None:
        if self.journal is not None:
            self.journal.append(change)

    def of_relay(self, relay_ip: str) -> list[tuple[str, CallEntry]]:
        return [(call_id, entry) for call_id, entry in self.entries.items() if entry.relay_ip == relay_ip]

    def relay_ips(self) -> set[str]:
        return {entry.relay_ip for entry in self.entries.values()}

    def expired_before(self, deadline: float) -> list[str]:
        return [call_id for call_id, entry in self.entries.items() if entry.expire_time is not None and entry.expire_time < deadline]

    def snapshot(self) -> dict:
        return {"version": STATE_VERSION, "sessions": {call_id: asdict(entry) for call_id, entry in self.entries.items()}}

    def apply(self, change: dict) -> None:
        """Replay one journal line (no new journal line is written)."""
        if "set" in change:
            self.entries[str(change["set"])] = CallEntry.from_json(change["entry"])
        elif "pop" in change:
            self.entries.pop(str(change["pop"]), None)
        else:
            raise ValueError("neither set nor pop")


class Journal:
    """The append-only record of a call table's changes beside its snapshot file."""

    def __init__(self, path: str, clock) -> None:  # noqa: ANN001
        self.path = path
        self.journal_path = path + JOURNAL_SUFFIX
        self.clock = clock
        self.table: CallTable | None = None
        self.fd: int | None = None
        self.lines = 0
        self._sync = None
        self._retry_timer = None
        self.failed = False

    # -- start: snapshot, then the changes after it

    def load(self, table: CallTable) -> int:
        """Fill ``table`` from the snapshot and the journal; a corrupt snapshot is set aside."""
        try:
            with open(self.path, encoding="utf-8") as stream:
                data = json.load(stream)
            restored = {call_id: CallEntry.from_json(item) for call_id, item in data["sessions"].items()}
        except FileNotFoundError:
            restored = {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            aside = f"{self.path}.corrupt"
            log.error(
                "Cannot restore the call table from {path} ({error}); moved it to {aside} and starting without it",
                path=self.path,
                error=error,
                aside=aside,
            )
            _replace_quietly(self.path, aside)
            restored = {}
        table.entries.update(restored)
        replayed = self._replay(table)
        return len(table.entries) if (restored or replayed) else 0

    def _replay(self, table: CallTable) -> int:
        try:
            with open(self.journal_path, "rb") as stream:
                content = stream.read()
        except FileNotFoundError:
            return 0
        except OSError as error:
            log.error("Cannot read the call table journal {path}: {error}", path=self.journal_path, error=error)
            return 0
        replayed = 0
        lines = content.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                table.apply(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                # only the last line can be torn (the machine went down mid-write); anything else is worth a word
                if number < len(lines) - 1:
                    log.error("Skipped line {number} of {path}: {error}", number=number, path=self.journal_path, error=error)
                continue
            replayed += 1
        return replayed

    def open(self, table: CallTable) -> None:
        """Fold what was loaded into a fresh snapshot and journal ``table``'s changes from now on."""
        self.table = table
        table.journal = self
        self.compact()

    # -- running

    def append(self, change: dict) -> None:
        if self.fd is None:
            return
        line = json.dumps(change, separators=(",", ":")).encode() + b"\n"
        try:
            os.write(self.fd, line)
        except OSError as error:
            self._failed(error)
            return
        self.lines += 1
        if self._sync is None:
            self._sync = self.clock.callLater(SYNC_DELAY, self.sync)
        if self.lines > max(MIN_COMPACT_LINES, 4 * len(self.table)):
            self.compact()

    def sync(self) -> None:
        self._sync = None
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            except OSError as error:
                self._failed(error)

    def compact(self) -> None:
        """Write the whole table atomically, then start the journal afresh (replaying the old one
        over the new snapshot would be harmless: its changes are already in it)."""
        try:
            _write_atomically(self.path, self.table.snapshot())
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as error:
            self._failed(error)
            return
        self._close_fd()
        self.fd = fd
        self.lines = 0
        if self.failed:
            log.info("The call table is written again to {path}", path=self.path)
            self.failed = False

    def _failed(self, error: OSError) -> None:
        if not self.failed:
            log.critical(
                "Cannot write the call table to {path} ({error}); calls set up now are lost if the dispatcher stops before it can",
                path=self.path,
                error=error,
            )
        self.failed = True
        if self._retry_timer is None:
            # try again with the whole table, so nothing that could not be journalled is missed
            self._retry_timer = self.clock.callLater(1, self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        if self.failed:
            self.compact()

    def close(self) -> None:
        """Leave everything in the snapshot; the table is no longer journalled."""
        for timer in (self._sync, self._retry_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._sync = self._retry_timer = None
        self.compact()
        if self.table is not None:
            self.table.journal = None
        self._close_fd()
        if not self.failed:
            _unlink_quietly(self.journal_path)  # the snapshot has it all

    def _close_fd(self) -> None:
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def _write_atomically(path: str, data: dict) -> None:
    """A crash mid-write leaves the previous file intact."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(data, stream, separators=(",", ":"))
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _replace_quietly(source: str, target: str) -> None:
    try:
        os.replace(source, target)
    except OSError:
        pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

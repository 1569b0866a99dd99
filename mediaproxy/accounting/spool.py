"""A durable, ordered queue of accounting records: one JSON file per record in a directory.

Every record is written here before any delivery is tried, so a record survives a backend
outage, a dispatcher restart or crash. Files are named by a sequence number, which keeps delivery
in the order the calls ended. A record the backend refuses for good goes to ``rejected/`` with
the reason beside it, where the operator can inspect or replay it; nothing is deleted unread.

Each file and the directory are fsync'ed before the record counts as spooled. When the spool
cannot be written (disk full, no descriptors), records are held in memory, in their place in the
order, up to ``MAX_HELD``; they are delivered from there and written to the spool once it works.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass

SUFFIX = ".json"
REJECTED = "rejected"
MAX_HELD = 10_000


class SpoolError(Exception):
    """The spool directory cannot be used."""


class SpoolFull(Exception):
    """The record could be neither written nor held: ``MAX_HELD`` records already wait in memory."""


@dataclass(frozen=True)
class Entry:
    sequence: int
    path: str
    queued_at: float
    record: dict | None = None  # held in memory: the file could not be written

    @property
    def held(self) -> bool:
        return self.record is not None


class Spool:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.rejected_directory = os.path.join(directory, REJECTED)
        try:
            os.makedirs(self.rejected_directory, mode=0o750, exist_ok=True)
        except OSError as error:
            raise SpoolError(f"cannot create the accounting spool directory {directory}: {error.strerror}") from None
        self.entries: deque[Entry] = deque()
        for sequence, name in sorted(self._spooled_files()):
            path = os.path.join(directory, name)
            self.entries.append(Entry(sequence, path, _queued_at(path)))
        self.next_sequence = self.entries[-1].sequence + 1 if self.entries else 1
        self.held = 0  # entries whose record is in memory only
        self.last_error: OSError | None = None

    def _spooled_files(self) -> list[tuple[int, str]]:
        found = []
        for name in os.listdir(self.directory):
            stem, suffix = os.path.splitext(name)
            if suffix == SUFFIX and stem.isdigit():
                found.append((int(stem), name))
        return found

    def __len__(self) -> int:
        return len(self.entries)

    def oldest_age(self, now: float) -> float | None:
        return max(now - self.entries[0].queued_at, 0.0) if self.entries else None

    def append(self, record: dict, now: float) -> Entry:
        """Spool a record; the entry is ``held`` when it could only be kept in memory (the reason
        in ``last_error``); SpoolFull when not even that."""
        entry = Entry(self.next_sequence, os.path.join(self.directory, f"{self.next_sequence:012d}{SUFFIX}"), now)
        if not self.held:
            try:
                self._write(entry, record)
            except OSError as error:
                self.last_error = error
            else:
                self.next_sequence += 1
                self.entries.append(entry)
                return entry
        # held, and so is every record after it until they can all be written: files stay in order
        if self.held >= MAX_HELD:
            raise SpoolFull(f"{MAX_HELD} records already wait in memory for the spool")
        held = Entry(entry.sequence, entry.path, entry.queued_at, record)
        self.next_sequence += 1
        self.entries.append(held)
        self.held += 1
        return held

    def _write(self, entry: Entry, record: dict) -> None:
        temporary = entry.path + ".tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump({"queued_at": entry.queued_at, "record": record}, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, entry.path)
            _sync_directory(self.directory)
        except OSError:
            _unlink_quietly(temporary)
            raise

    def write_held(self) -> int:
        """Try to write the records held in memory to the spool, oldest first; returns how many are left."""
        for index, entry in enumerate(self.entries):
            if not entry.held:
                continue
            try:
                self._write(entry, entry.record)
            except OSError:
                break
            self.entries[index] = Entry(entry.sequence, entry.path, entry.queued_at)
            self.held -= 1
        return self.held

    def first(self) -> Entry | None:
        return self.entries[0] if self.entries else None

    def read(self, entry: Entry) -> dict:
        """The record of an entry; raises ValueError when the file is not a spooled record."""
        if entry.held:
            return entry.record
        with open(entry.path, encoding="utf-8") as file:
            content = json.load(file)
        if not isinstance(content, dict) or not isinstance(content.get("record"), dict):
            raise ValueError("not a spooled accounting record")
        return content["record"]

    def remove(self, entry: Entry) -> None:
        current = self._discard(entry)
        if not current.held:
            _unlink_quietly(current.path)

    def reject(self, entry: Entry, reason: str) -> str:
        """Move an entry aside for the operator, with the reason in a .reason file; returns its new path."""
        current = self._discard(entry)
        target = os.path.join(self.rejected_directory, os.path.basename(current.path))
        if current.held:
            self._write(Entry(current.sequence, target, current.queued_at), current.record)
        else:
            os.replace(current.path, target)
        with open(target + ".reason", "w", encoding="utf-8") as file:
            file.write(reason + "\n")
        return target

    def _discard(self, entry: Entry) -> Entry:
        """Take the entry of ``entry``'s sequence out of the queue: a held record may have been
        written to its file since it was handed out."""
        if self.entries and self.entries[0].sequence == entry.sequence:
            current = self.entries.popleft()
        else:
            current = next(item for item in self.entries if item.sequence == entry.sequence)
            self.entries.remove(current)
        if current.held:
            self.held -= 1
        return current


def _sync_directory(path: str) -> None:
    """A renamed file survives a crash only once its directory is on disk too."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _queued_at(path: str) -> float:
    try:
        with open(path, encoding="utf-8") as file:
            return float(json.load(file)["queued_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return os.path.getmtime(path)

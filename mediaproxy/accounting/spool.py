"""A durable, ordered queue of accounting records: one JSON file per record in a directory.

Every record is written here before any delivery is tried, so a record survives a backend
outage, a dispatcher restart or crash. Files are named by a sequence number, which keeps delivery
in the order the calls ended. A record the backend refuses for good goes to ``rejected/`` with
the reason beside it, where the operator can inspect or replay it; nothing is deleted unread.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass

SUFFIX = ".json"
REJECTED = "rejected"


class SpoolError(Exception):
    """The spool directory cannot be used."""


@dataclass(frozen=True)
class Entry:
    sequence: int
    path: str
    queued_at: float


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
        entry = Entry(self.next_sequence, os.path.join(self.directory, f"{self.next_sequence:012d}{SUFFIX}"), now)
        temporary = entry.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump({"queued_at": now, "record": record}, file)
        os.replace(temporary, entry.path)
        self.next_sequence += 1
        self.entries.append(entry)
        return entry

    def first(self) -> Entry | None:
        return self.entries[0] if self.entries else None

    def read(self, entry: Entry) -> dict:
        """The record of an entry; raises ValueError when the file is not a spooled record."""
        with open(entry.path, encoding="utf-8") as file:
            content = json.load(file)
        if not isinstance(content, dict) or not isinstance(content.get("record"), dict):
            raise ValueError("not a spooled accounting record")
        return content["record"]

    def remove(self, entry: Entry) -> None:
        self._discard(entry)
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            pass

    def reject(self, entry: Entry, reason: str) -> str:
        """Move an entry aside for the operator, with the reason in a .reason file; returns its new path."""
        self._discard(entry)
        target = os.path.join(self.rejected_directory, os.path.basename(entry.path))
        os.replace(entry.path, target)
        with open(target + ".reason", "w", encoding="utf-8") as file:
            file.write(reason + "\n")
        return target

    def _discard(self, entry: Entry) -> None:
        if self.entries and self.entries[0] == entry:
            self.entries.popleft()
        else:
            self.entries.remove(entry)


def _queued_at(path: str) -> float:
    try:
        with open(path, encoding="utf-8") as file:
            return float(json.load(file)["queued_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return os.path.getmtime(path)

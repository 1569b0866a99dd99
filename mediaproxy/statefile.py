"""State that must outlive the process: a keyed table kept as a snapshot file plus a journal.

Every change is appended to the journal as it happens, so a process killed at any moment loses
nothing: the kernel keeps what was written even when the process dies at once, and an fsync
follows within ``SYNC_DELAY`` for the machine going down. With ``sync_in`` that fsync runs in a
thread, on a descriptor of its own: on a busy or slow disk it takes milliseconds (tens on a
loaded one), and the reactor serving every proxy and relay must not wait for it. The journal is
folded into the snapshot (written atomically) when it grows past a few times the table, and at a
clean stop.

The snapshot is ``{"version": n, <section>: {key: value}}``; journal lines are
``{"set": key, "value": value}`` or ``{"pop": key}``; values are plain JSON.

With ``keep_encoded``, each value's JSON text is kept as it was journalled, and folding writes
those texts as they are: at 20,000 relay sessions, encoding them all afresh held the reactor for
about 2 s at every fold, where joining the texts takes a fraction of that. Every idle call holds
one, so :meth:`squeeze` (run every minute) deflates the texts kept since the last time, off the
path of the commands that change them. The texts are alike (the same fields in the same order),
so each is deflated against a preset dictionary, the first text squeezed: a relay session's 850
bytes of JSON in about 135 (320 on its own), under 10 µs each way. A clean stop encodes
everything afresh once, so the snapshot has the latest state.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Hashable

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mediaproxy.runtime.log import Logger

log = Logger(namespace="statefile")

JOURNAL_SUFFIX = ".journal"
SYNC_DELAY = 0.05
MIN_COMPACT_LINES = 1000
RETRY_DELAY = 1.0
# raw deflate with a 4 KiB window (a kept text is a few hundred bytes: the dictionary is what it
# looks back into); the dictionary is at most this long, its end being what deflate can reach
DEFLATE_WINDOW_BITS = -12
DICTIONARY_BYTES = 2048


class StateFile:
    def __init__(
        self,
        path: str,
        section: str,
        version: int,
        clock,
        what: str,
        keep_encoded: bool = False,
        key_text: Callable[[Hashable], str] = str,
        sync_in: Callable[[Callable[[], None]], Deferred] | None = None,
    ) -> None:
        """``key_text`` writes a key as the file's text: the table's own keys (a relay's are
        tuples) are what it holds, so it keeps no second string of each. ``sync_in`` runs a
        blocking call off the reactor; by default the clock's thread pool (``in_threads``), and
        with a clock that has none (a test's ``Clock``) the journal's fsync runs in place."""
        self.path = path
        self.journal_path = path + JOURNAL_SUFFIX
        self.section = section
        self.version = version
        self.clock = clock
        self.what = what  # for the log: "the call table"
        self.fd: int | None = None
        self.lines = 0
        self.current: Callable[[], dict] | None = None  # the whole state now, for compaction
        self.count: Callable[[], int] = lambda: 0  # how many keys it has, cheaply
        self._sync = None
        self._retry = None
        self.sync_in = sync_in if sync_in is not None else in_threads(clock)
        self._syncing = False  # an fsync is running in a thread
        self._sync_again = False  # and more was written since it started
        self.failed = False
        self.keep_encoded = keep_encoded
        self.key_text = key_text
        self._encoded: dict[Hashable, str | bytes] = {}  # key → its value's JSON text (deflated once squeezed), with keep_encoded
        self._dictionary: bytes | None = None  # what squeezed texts are deflated against, set by the first

    # -- start: the snapshot, then the changes after it

    def load(self) -> dict:
        """What was kept: the snapshot with the journal replayed over it. A corrupt snapshot is set aside."""
        try:
            with open(self.path, encoding="utf-8") as stream:
                data = json.load(stream)
            state = data[self.section]
            if not isinstance(state, dict):
                raise TypeError(f"{self.section} is not an object")
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError, KeyError, TypeError) as error:
            aside = f"{self.path}.corrupt"
            log.error(
                "Cannot restore {what} from {path} ({error}); moved it to {aside} and starting without it",
                what=self.what,
                path=self.path,
                error=error,
                aside=aside,
            )
            _replace_quietly(self.path, aside)
            state = {}
        self._replay(state)
        return state

    def _replay(self, state: dict) -> None:
        try:
            with open(self.journal_path, "rb") as stream:
                content = stream.read()
        except FileNotFoundError:
            return
        except OSError as error:
            log.error("Cannot read the journal {path}: {error}", path=self.journal_path, error=error)
            return
        lines = content.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                change = json.loads(line)
                if "set" in change:
                    state[str(change["set"])] = change["value"]
                elif "pop" in change:
                    state.pop(str(change["pop"]), None)
                else:
                    raise ValueError("neither set nor pop")
            except (ValueError, KeyError, TypeError) as error:
                # only the last line can be torn (the machine went down mid-write); anything else is worth a word
                if number < len(lines) - 1:
                    log.error("Skipped line {number} of {path}: {error}", number=number, path=self.journal_path, error=error)

    def open(self, current: Callable[[], dict], count: Callable[[], int]) -> None:
        """Fold what was loaded into a fresh snapshot and journal changes from now on; ``current``
        gives the whole state (for compaction), ``count`` its size (checked at every change)."""
        self.current = current
        self.count = count
        if self.keep_encoded:
            self._encode_all()
            self.count = lambda: len(self._encoded)
        self.compact()

    def _encode_all(self) -> None:
        self._encoded = {key: _encode(value) for key, value in self.current().items()}

    # -- running

    def set(self, key: Hashable, value: object) -> None:
        text = _encode(value)
        if self.keep_encoded:
            self._encoded[key] = text  # first: a fold after a failed write still has it
        self._append(f'{{"set":{_encode(self.key_text(key))},"value":{text}}}')

    def squeeze(self) -> None:
        """Deflate the kept texts that are not yet (with keep_encoded)."""
        encoded = self._encoded
        for key, text in encoded.items():
            if isinstance(text, str):
                if self._dictionary is None:
                    self._dictionary = text.encode()[-DICTIONARY_BYTES:]
                encoded[key] = _deflate(text, self._dictionary)

    def pop(self, key: Hashable) -> None:
        if self.keep_encoded:
            self._encoded.pop(key, None)
        self._append(f'{{"pop":{_encode(self.key_text(key))}}}')

    def _append(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, line.encode() + b"\n")
        except OSError as error:
            self._failed(error)
            return
        self.lines += 1
        if self._sync is None:
            self._sync = self.clock.callLater(SYNC_DELAY, self.sync)
        if self.lines > MIN_COMPACT_LINES and self.lines > 4 * self.count():
            self.compact()

    def sync(self) -> None:
        self._sync = None
        if self.fd is None:
            return
        if self.sync_in is None:
            try:
                os.fsync(self.fd)
            except OSError as error:
                self._failed(error)
            return
        if self._syncing:
            self._sync_again = True  # one fsync at a time; the next follows this one
            return
        try:
            # a descriptor of its own: a fold may close and replace the journal's meanwhile
            fd = os.dup(self.fd)
        except OSError as error:
            self._failed(error)
            return
        self._syncing = True
        self.sync_in(lambda: _sync_and_close(fd)).addCallbacks(self._synced, self._sync_failed)

    def _synced(self, _: object = None) -> None:
        self._syncing = False
        if self._sync_again:
            self._sync_again = False
            self.sync()

    def _sync_failed(self, failure: Failure) -> None:
        if failure.check(OSError):
            self._failed(failure.value)
        else:
            log.failure("Syncing {what} failed", failure, what=self.what)
        self._synced()

    def compact(self) -> None:
        """Write the whole state atomically, then start the journal afresh (replaying the old one
        over the new snapshot would be harmless: its changes are already in it)."""
        try:
            _write_atomically(self.path, self._snapshot())
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as error:
            self._failed(error)
            return
        self._close_fd()
        self.fd = fd
        self.lines = 0
        if self.failed:
            log.info("{what} is written again to {path}", what=self.what.capitalize(), path=self.path)
            self.failed = False

    def _snapshot(self) -> str:
        if not self.keep_encoded:
            key_text = self.key_text
            return _encode({"version": self.version, self.section: {key_text(key): value for key, value in self.current().items()}})
        dictionary, key_text = self._dictionary, self.key_text
        body = ",".join(f"{_encode(key_text(key))}:{_inflate(text, dictionary)}" for key, text in self._encoded.items())
        return f'{{"version":{self.version},{_encode(self.section)}:{{{body}}}}}'

    def _failed(self, error: OSError) -> None:
        if not self.failed:
            log.critical(
                "Cannot write {what} to {path} ({error}); what changes now is lost if the process stops before it can",
                what=self.what,
                path=self.path,
                error=error,
            )
        self.failed = True
        if self._retry is None:
            # try again with the whole state, so nothing that could not be journalled is missed
            self._retry = self.clock.callLater(RETRY_DELAY, self._try_again)

    def _try_again(self) -> None:
        self._retry = None
        if self.failed:
            self.compact()

    def close(self) -> None:
        """Leave everything in the snapshot; nothing more is journalled."""
        for timer in (self._sync, self._retry):
            if timer is not None and timer.active():
                timer.cancel()
        self._sync = self._retry = None
        if self.current is not None:
            if self.keep_encoded:
                self._encode_all()  # what changed since it was last journalled (counters) goes in too
            self.compact()
        self._close_fd()
        self.current = None
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


# one encoder for every change: encode() is one-shot, so the C encoder (json.dump's streaming one
# is 10x slower on a big state); the values are plain data the program built, which cannot hold
# themselves, so the cycle check (a dict of every container met) is skipped: 20% of an encode
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def in_threads(reactor) -> Callable[[Callable[[], None]], Deferred] | None:
    """What runs a StateFile's fsync in ``reactor``'s thread pool; None for a clock without one
    (a test's ``Clock``), where it runs in place."""
    pool = getattr(reactor, "getThreadPool", None)
    if pool is None:
        return None
    return lambda work: threads.deferToThreadPool(reactor, pool(), work)


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _deflate(text: str, dictionary: bytes) -> bytes:
    deflater = zlib.compressobj(1, zlib.DEFLATED, DEFLATE_WINDOW_BITS, zdict=dictionary)
    return deflater.compress(text.encode()) + deflater.flush()


def _inflate(data: str | bytes, dictionary: bytes | None) -> str:
    if isinstance(data, str):
        return data
    return zlib.decompressobj(DEFLATE_WINDOW_BITS, zdict=dictionary).decompress(data).decode()


def _write_atomically(path: str, text: str) -> None:
    """A crash mid-write leaves the previous file intact."""
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError:
        _unlink_quietly(temporary)
        raise
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

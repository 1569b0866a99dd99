"""The snapshot-and-journal state file, with and without the values kept encoded."""

import errno
import json
import os

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel

from harness import logged
from mediaproxy import statefile


def state_file(tmp_path, keep_encoded):
    return statefile.StateFile(str(tmp_path / "state"), "things", 3, Clock(), "the things", keep_encoded=keep_encoded)


@pytest.mark.parametrize("keep_encoded", [False, True])
def test_changes_survive_a_crash_and_a_fold(tmp_path, keep_encoded):
    table = {"a": {"n": 1}}
    state = state_file(tmp_path, keep_encoded)
    assert state.load() == {}
    state.open(lambda: dict(table), lambda: len(table))
    table["b"] = {"n": 2}
    state.set("b", table["b"])
    table["a"] = {"n": 5}
    state.set("a", table["a"])
    del table["b"]
    state.pop("b")
    # killed here: the journal has every change, the snapshot only what was there at open
    assert json.loads((tmp_path / "state").read_text()) == {"version": 3, "things": {"a": {"n": 1}}}
    assert state_file(tmp_path, keep_encoded).load() == {"a": {"n": 5}}
    state.compact()
    assert json.loads((tmp_path / "state").read_text()) == {"version": 3, "things": {"a": {"n": 5}}}
    assert (tmp_path / "state.journal").read_bytes() == b""
    assert state_file(tmp_path, keep_encoded).load() == {"a": {"n": 5}}


def test_kept_encoded_a_fold_writes_what_was_journalled_and_a_clean_stop_the_latest(tmp_path):
    table = {"a": {"packets": 1}}
    state = state_file(tmp_path, keep_encoded=True)
    state.load()
    state.open(lambda: dict(table), lambda: len(table))
    table["a"] = {"packets": 7}  # counted since, not journalled yet
    state.compact()
    assert json.loads((tmp_path / "state").read_text())["things"] == {"a": {"packets": 1}}  # no encoding of everything
    state.close()
    assert json.loads((tmp_path / "state").read_text())["things"] == {"a": {"packets": 7}}
    assert not (tmp_path / "state.journal").exists()


def test_kept_texts_are_deflated_by_squeeze_and_fold_the_same(tmp_path):
    state = state_file(tmp_path, keep_encoded=True)
    state.load()
    table = {}
    state.open(lambda: dict(table), lambda: len(table))
    noise = "".join(f"{(n * 2654435761) % 4294967291:08x}" for n in range(150))  # 1,200 characters deflate alone cannot shrink much
    value = {"call": "x" * 2000, "noise": noise, "packets": 3}
    state.set("a", value)
    assert isinstance(state._encoded["a"], str)  # the command's path does not deflate
    state.squeeze()
    assert isinstance(state._encoded["a"], bytes) and len(state._encoded["a"]) < 1000
    state.set("b", {"packets": 1})  # one plain, one deflated: a fold takes both as they are
    state.compact()
    assert json.loads((tmp_path / "state").read_text())["things"] == {"a": value, "b": {"packets": 1}}
    # texts squeezed later are deflated against the first one: alike texts take a few bytes each
    alike = {"call": "x" * 1999 + "y", "noise": noise, "packets": 4}
    state.set("c", alike)
    state.squeeze()
    assert len(state._encoded["c"]) < 100  # alone, the noise deflates to 667
    state.compact()
    assert json.loads((tmp_path / "state").read_text())["things"] == {"a": value, "b": {"packets": 1}, "c": alike}


def test_the_journal_is_folded_as_it_grows(tmp_path):
    table = {str(number): number for number in range(10)}
    state = state_file(tmp_path, keep_encoded=True)
    state.load()
    state.open(lambda: dict(table), lambda: len(table))
    for round_number in range(statefile.MIN_COMPACT_LINES // 10 + 1):
        for key in table:
            state.set(key, round_number)
    assert state.lines < statefile.MIN_COMPACT_LINES  # folded once past the threshold
    last = statefile.MIN_COMPACT_LINES // 10
    assert state_file(tmp_path, keep_encoded=True).load() == {key: last for key in table}
    state.close()


class Runner:
    """Stands in for a thread pool: holds each job until the test runs it."""

    def __init__(self):
        self.jobs = []

    def __call__(self, work):
        done = defer.Deferred()
        self.jobs.append((work, done))
        return done

    def run_next(self):
        work, done = self.jobs.pop(0)
        try:
            work()
        except OSError as error:
            done.errback(error)
        else:
            done.callback(None)


def synced_in_a_pool(tmp_path, table):
    """A state file of ``table`` whose fsyncs wait in a Runner; (clock, runner, state)."""
    clock, runner = Clock(), Runner()
    state = statefile.StateFile(str(tmp_path / "state"), "things", 3, clock, "the things", sync_in=runner)
    state.load()
    state.open(lambda: dict(table), lambda: len(table))
    return clock, runner, state


def test_the_journal_is_synced_off_the_reactor_one_fsync_at_a_time(tmp_path, monkeypatch):
    clock, runner, state = synced_in_a_pool(tmp_path, {"a": 1})
    synced = []
    real_fsync = statefile.os.fsync
    monkeypatch.setattr(statefile.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    state.set("a", 2)
    clock.advance(statefile.SYNC_DELAY)
    assert synced == [] and len(runner.jobs) == 1  # nothing synced in place: it waits for the pool
    state.set("a", 3)
    clock.advance(statefile.SYNC_DELAY)
    assert len(runner.jobs) == 1  # one at a time: the next follows
    state.compact()  # a fold closes the journal's descriptor while the sync is under way
    state.set("a", 4)
    synced.clear()  # the fold's own (its snapshot is written in place)
    runner.run_next()
    (first,) = synced
    assert first != state.fd
    with pytest.raises(OSError):
        os.fstat(first)  # its own descriptor, closed once synced
    assert len(runner.jobs) == 1  # what was written meanwhile is synced next
    runner.run_next()
    assert len(synced) == 2 and not runner.jobs and not state.failed
    clock.advance(statefile.SYNC_DELAY)  # the timer the last write set
    runner.run_next()
    clock.advance(statefile.SYNC_DELAY)
    assert not runner.jobs and len(synced) == 3  # nothing new was written
    assert statefile.StateFile(str(tmp_path / "state"), "things", 3, Clock(), "the things").load() == {"a": 4}


def test_a_failed_sync_in_the_pool_is_said_and_the_state_written_again(tmp_path, monkeypatch):
    table = {"a": 1}
    clock, runner, state = synced_in_a_pool(tmp_path, table)
    state.set("a", 2)
    clock.advance(statefile.SYNC_DELAY)

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(statefile.os, "fsync", broken)
    with logged() as events:
        runner.run_next()
    assert state.failed and any("Input/output error" in line for line in events.at(LogLevel.critical))
    monkeypatch.undo()
    table["a"] = 2
    clock.advance(statefile.RETRY_DELAY)  # the whole state again
    assert not state.failed
    assert json.loads((tmp_path / "state").read_text())["things"] == {"a": 2}


def test_only_a_reactor_runs_the_sync_in_threads():
    from twisted.internet import reactor

    assert statefile.in_threads(Clock()) is None
    assert callable(statefile.in_threads(reactor))
    # and a state file takes its clock's: the programs' (a reactor) sync in threads, tests in place
    assert statefile.StateFile("unused", "things", 3, reactor, "the things").sync_in is not None
    assert statefile.StateFile("unused", "things", 3, Clock(), "the things").sync_in is None

"""The snapshot-and-journal state file, with and without the values kept encoded."""

import json

import pytest
from twisted.internet.task import Clock

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

"""Nothing lost to a crash, with the real programs: the dispatcher killed right after new calls,
remove answered before the relay's round trip, and a relay with 20,000 sessions listed in pages."""

from __future__ import annotations

import json
import sqlite3
import statistics
import time

from deployment import Deployment, wait_until

from mediaproxy.testing import remove, update


def _call_ids(database) -> list[str]:
    try:
        return sorted(call_id for (call_id,) in sqlite3.connect(database).execute("SELECT call_id FROM media_sessions"))
    except sqlite3.OperationalError:
        return []


def _answered(proxy, call_id: str) -> None:
    assert proxy.request(update(call_id, "ft", media="audio:127.0.0.1:9:sendrecv:ice=no", dialog_id="2:3")) != "error"
    assert proxy.request(update(call_id, "ft", "tt", kind="reply", media="audio:127.0.0.1:11:sendrecv:ice=no")) != "error"


def test_a_dispatcher_killed_right_after_new_calls_loses_none(tmp_path):
    database = tmp_path / "accounting.sqlite"
    programs = Deployment(tmp_path, f"[Dispatcher]\naccounting = database\n[Database]\ndburi = sqlite://{database}\n", stream_timeout=60)
    programs.start()
    try:
        proxy = programs.proxy()
        calls = [f"crash-{number}" for number in range(10)]
        for call_id in calls:
            _answered(proxy, call_id)
        proxy.close()
        programs.dispatcher.process.kill()  # at once: no periodic save could have happened
        programs.dispatcher.process.wait()
        programs.start_dispatcher()
        programs.dispatcher.wait_for_log("Restored 10 calls")
        programs.dispatcher.wait_for_log("Relay 127.0.0.1 connected")
        proxy = programs.proxy()
        for call_id in calls:
            assert proxy.request(remove(call_id, "ft", "tt")) == "removed"
        wait_until(lambda: _call_ids(database) == sorted(calls), "a record of every call", timeout=15)
        records = [json.loads(info) for (info,) in sqlite3.connect(database).execute("SELECT info FROM media_sessions")]
        assert {(record["end_reason"], record["dialog_id"]) for record in records} == {("bye", "2:3")}
    finally:
        programs.kill()


def test_remove_is_answered_before_the_relay_round_trip(tmp_path):
    programs = Deployment(tmp_path, stream_timeout=60).start()
    try:
        proxy = programs.proxy()
        for number in range(200):
            _answered(proxy, f"quick-{number}")
        timings = []
        for number in range(200):
            started = time.perf_counter()
            assert proxy.request(remove(f"quick-{number}", "ft", "tt")) == "removed"
            timings.append(time.perf_counter() - started)
        assert statistics.median(timings) < 0.001, f"median {statistics.median(timings) * 1000:.2f} ms"
        # and the relay did remove them all
        wait_until(lambda: json.loads(programs.management(b"sessions")) == [], "the relay's sessions gone", timeout=10)
    finally:
        programs.kill()


def test_twenty_thousand_sessions_are_listed_and_survive_a_dispatcher_restart(tmp_path):
    programs = Deployment(tmp_path, stream_timeout=600).start()
    count = 20_000
    try:
        proxy = programs.proxy()
        # offers without SDP: sessions without ports, so 20,000 fit any port range
        padding = "x" * 200  # records of some size: the whole list is far above the link's old 4 MiB line
        for number in range(count):
            assert proxy.request(update(f"many-{number}-{padding}", "ft", dialog_id="1:1")) != "error"
        listed = json.loads(programs.management(b"sessions"))
        assert len(listed) == count and len(json.dumps(listed)) > 4 * 1024 * 1024
        programs.restart_dispatcher()
        programs.dispatcher.wait_for_log(f"Restored {count} calls")
        programs.dispatcher.wait_for_log(f"Relay 127.0.0.1 has {count} sessions", timeout=60)
        assert "is no longer on relay" not in programs.dispatcher.output()
        assert "longer than" not in programs.dispatcher.output()
        assert len(json.loads(programs.management(b"sessions"))) == count
        proxy = programs.proxy()
        assert proxy.request(remove(f"many-{count - 1}-{padding}", "ft")) == "removed"
    finally:
        programs.kill()

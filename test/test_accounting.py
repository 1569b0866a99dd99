"""Accounting without servers: the spool, ordered delivery with backoff, RADIUS attributes, SQLite."""

import gc
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading

import pytest
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest as trial

from harness import ROOT, LogCollector, program_command
from mediaproxy import configuration
from mediaproxy.accounting import radius, sql
from mediaproxy.accounting import spool as spool_module
from mediaproxy.accounting.delivery import MAX_BACKOFF, BackendUnavailable, DeliveryQueue, RecordRejected, ThreadRunner
from mediaproxy.accounting.plugin import STOP_TIMEOUT, AccountingPlugin
from mediaproxy.accounting.spool import Spool, SpoolError, SpoolFull
from mediaproxy.net import certgen
from mediaproxy.runtime.process import StartupError
from mediaproxy.wire.statistics import SessionRecord


def typed(number, **fields):
    """The record as the dispatcher hands it to accounting."""
    return SessionRecord.from_json(record(number, **fields))


def record(number, **fields):
    base = {
        "call_id": f"call-{number}@example.com",
        "from_tag": f"ft{number}",
        "to_tag": f"tt{number}",
        "from_uri": "alice@example.com",
        "to_uri": "bob@example.com",
        "start_time": 1795557764.485,
        "duration": 62,
        "caller_ua": "Alice phone",
        "callee_ua": "Bob phone",
        "username": None,
        "dialog_id": "5:6",
        "timed_out": False,
        "streams": [
            {
                "media_type": "audio",
                "status": "closed",
                "timeout_wait": 0,
                "caller_codec": "G711u",
                "callee_codec": "G711a",
                "start_time": 0,
                "end_time": 62,
                "post_dial_delay": 2.75,
                "caller_bytes": 1066560,
                "callee_bytes": 533280,
                "caller_packets": 3100,
                "callee_packets": 1550,
                "caller_local": "203.0.113.5:40000",
                "callee_local": "203.0.113.5:40002",
                "caller_remote": "192.0.2.10:6000",
                "callee_remote": "198.51.100.20:7000",
            },
            {
                "media_type": "video",
                "status": "rejected",
                "timeout_wait": 0,
                "caller_codec": "Unknown",
                "callee_codec": "Unknown",
                "start_time": 0,
                "end_time": 0,
                "post_dial_delay": None,
                "caller_bytes": 0,
                "callee_bytes": 0,
                "caller_packets": 0,
                "callee_packets": 0,
                "caller_local": "203.0.113.5:40004",
                "callee_local": "203.0.113.5:40006",
                "caller_remote": "Unknown",
                "callee_remote": "Unknown",
            },
        ],
    }
    base.update(fields)
    return base


# -- spool


def test_spool_keeps_order_across_reopening(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    for number in range(3):
        spool.append(record(number), now=100.0 + number)
    assert len(spool) == 3 and spool.oldest_age(110.0) == 10.0
    spool.remove(spool.first())
    reopened = Spool(str(tmp_path / "spool"))
    assert [reopened.read(entry)["call_id"] for entry in reopened.entries] == ["call-1@example.com", "call-2@example.com"]
    assert reopened.oldest_age(111.0) == 10.0
    entry = reopened.append(record(3), now=120.0)
    assert entry.sequence == 4  # numbering goes on after the highest file left


def test_spool_sets_refused_records_aside_with_the_reason(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    entry = spool.append(record(1), now=1.0)
    target = spool.reject(entry, "Data too long for column 'call_id'")
    assert len(spool) == 0 and not os.path.exists(entry.path)
    assert json.loads(open(target).read())["record"]["call_id"] == "call-1@example.com"
    assert open(target + ".reason").read() == "Data too long for column 'call_id'\n"
    assert len(Spool(str(tmp_path / "spool"))) == 0


def test_spool_directory_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match="cannot create the accounting spool directory"):
        Spool(str(tmp_path / "file" / "spool"))


# -- delivery


class ScriptedBackend:
    """Answers each delivery from a script: None (accept), or an exception to raise."""

    def __init__(self, script=()):
        self.script = list(script)
        self.delivered = []
        self.attempts = 0

    def deliver(self, item):
        self.attempts += 1
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, Exception):
            raise outcome
        self.delivered.append(item.call_id)
        return outcome

    def close(self):
        pass


def make_queue(tmp_path, backend, clock=None):
    clock = clock or task.Clock()
    spool = Spool(str(tmp_path / "spool"))
    return DeliveryQueue("test", backend, spool, clock, defer.maybeDeferred), clock


def test_records_are_delivered_in_order_and_removed_from_the_spool(tmp_path):
    backend = ScriptedBackend()
    queue, _ = make_queue(tmp_path, backend)
    queue.start()
    for number in range(5):
        queue.add(typed(number))
    assert backend.delivered == [f"call-{n}@example.com" for n in range(5)]
    assert queue.status()["spooled"] == 0 and queue.status()["delivered"] == 5
    assert os.listdir(tmp_path / "spool") == ["rejected"]


def test_an_outage_keeps_records_in_order_with_growing_backoff(tmp_path):
    down = BackendUnavailable("connection refused")
    backend = ScriptedBackend([down, down, down])
    queue, clock = make_queue(tmp_path, backend)
    queue.start()
    queue.add(typed(1))
    clock.advance(0.5)
    queue.add(typed(2))  # does not jump the backoff
    assert backend.attempts == 1
    status = queue.status()
    assert status["state"] == "unavailable" and status["spooled"] == 2 and status["last_error"] == "connection refused"
    clock.advance(0.5)  # retried after 1 s, then 2 s, then 4 s
    assert backend.attempts == 2
    clock.advance(2)
    assert backend.attempts == 3 and backend.delivered == []
    assert queue.status()["oldest_age"] == 3
    clock.advance(3.9)
    assert backend.attempts == 3
    clock.advance(0.1)
    assert backend.delivered == ["call-1@example.com", "call-2@example.com"]
    assert queue.status()["state"] == "idle" and queue.status()["spooled"] == 0


def test_backoff_is_capped(tmp_path):
    backend = ScriptedBackend([BackendUnavailable("down")] * 20)
    queue, clock = make_queue(tmp_path, backend)
    queue.start()
    queue.add(typed(1))
    for _ in range(12):
        clock.advance(MAX_BACKOFF)
    assert backend.attempts == 13


def test_refused_record_is_set_aside_and_the_rest_go_on(tmp_path):
    backend = ScriptedBackend([None, RecordRejected("Data too long"), None])
    queue, _ = make_queue(tmp_path, backend)
    queue.start()
    for number in range(3):
        queue.add(typed(number))
    assert backend.delivered == ["call-0@example.com", "call-2@example.com"]
    assert queue.status()["rejected"] == 1
    assert sorted(os.listdir(tmp_path / "spool" / "rejected")) == ["000000000002.json", "000000000002.json.reason"]


def test_unexpected_exception_counts_as_unavailable(tmp_path):
    backend = ScriptedBackend([RuntimeError("driver bug")])
    queue, clock = make_queue(tmp_path, backend)
    queue.start()
    queue.add(typed(1))
    assert queue.status()["last_error"] == "RuntimeError: driver bug"
    clock.advance(1)
    assert backend.delivered == ["call-1@example.com"]


def test_records_from_an_earlier_run_go_first(tmp_path):
    earlier = Spool(str(tmp_path / "spool"))
    earlier.append(record(1), now=0.0)
    backend = ScriptedBackend()
    queue, _ = make_queue(tmp_path, backend)
    queue.add(typed(2))  # arrives before start: waits behind the spooled one
    queue.start()
    assert backend.delivered == ["call-1@example.com", "call-2@example.com"]


def test_stop_waits_for_the_record_in_flight(tmp_path):
    pending = defer.Deferred()
    queue = DeliveryQueue("test", ScriptedBackend(), Spool(str(tmp_path / "spool")), task.Clock(), lambda function, *args: pending)
    queue.start()
    queue.add(typed(1))
    stopped = queue.stop()
    assert not stopped.called
    pending.callback(None)
    assert stopped.called and len(queue.spool) == 0


def test_unwritable_spool_logs_the_whole_record(tmp_path):
    queue, _ = make_queue(tmp_path, ScriptedBackend())
    queue.spool.directory = str(tmp_path / "vanished")
    queue.backend.script = [BackendUnavailable("down")]
    collector = LogCollector()
    globalLogPublisher.addObserver(collector)
    try:
        queue.add(typed(7))
    finally:
        globalLogPublisher.removeObserver(collector)
    assert "cannot write to its spool" in collector.text()
    assert "call call-7@example.com is held in memory only" in collector.text()
    assert '"call_id": "call-7@example.com"' in collector.text()


class ThreadRunnerTests(trial.TestCase):
    @defer.inlineCallbacks
    def test_jobs_run_in_order_in_one_other_thread(self):
        runner = ThreadRunner(reactor, "test-accounting")
        self.addCleanup(runner.stop)
        seen = []

        def job(number):
            seen.append((number, threading.current_thread().name))
            return number * 2

        results = yield defer.gatherResults([runner(job, number) for number in range(5)])
        assert results == [0, 2, 4, 6, 8]
        assert seen == [(number, "test-accounting") for number in range(5)]
        with pytest.raises(ZeroDivisionError):
            yield runner(lambda: 1 / 0)


def test_plugin_stop_gives_up_on_a_stuck_backend(tmp_path):
    clock = task.Clock()
    plugin = AccountingPlugin("test", ScriptedBackend(), str(tmp_path / "spool"), clock, run=lambda function, *args: defer.Deferred())
    plugin.start()
    plugin.session_ended(typed(1))
    stopped = plugin.stop()
    assert not stopped.called
    clock.advance(STOP_TIMEOUT)
    assert stopped.called
    assert len(Spool(str(tmp_path / "spool"))) == 1  # the record waits for the next start


# -- RADIUS attributes and client configuration


def test_radius_attributes_follow_the_statistics():
    values = dict(radius.attributes(typed(1, username="alice@example.com")))
    assert values == {
        "Acct-Status-Type": "Update",
        "User-Name": "alice@example.com",
        "Acct-Session-Id": "call-1@example.com",
        "Sip-From-Tag": "ft1",
        "Sip-To-Tag": "tt1",
        "Acct-Session-Time": 62,
        "Acct-Input-Octets": 1066560,
        "Acct-Output-Octets": 533280,
        "NAS-IP-Address": "203.0.113.5",
        "Sip-User-Agents": "Alice phone+Bob phone",
        "Sip-Applications": "audio",
        "Media-Codecs": "G711u, Unknown",
        "Media-Info": "",
        "Acct-Delay-Time": 2,
    }


def test_radius_attributes_defaults_limits_and_media_info():
    long_agent = "é" * 200
    values = dict(radius.attributes(typed(1, to_tag=None, timed_out=True, caller_ua=long_agent, streams=[])))
    assert values["User-Name"] == "mediaproxy@default" and values["Sip-To-Tag"] == ""
    assert values["Media-Info"] == "timeout"
    assert len(values["Sip-User-Agents"].encode()) <= 253 and values["Sip-User-Agents"].startswith("éé")
    assert "NAS-IP-Address" not in values and "Acct-Delay-Time" not in values
    assert dict(radius.attributes(typed(1, timed_out=True, all_streams_ice=True)))["Media-Info"] == "ICE session"


def write_client_config(directory, **overrides):
    settings = {
        "acctserver": "127.0.0.1:11813",
        "servers": "servers",
        "dictionary": "dictionary",
        "radius_timeout": "2",
        "radius_retries": "3",
        "bindaddr": "*",
    }
    settings.update(overrides)
    lines = ["# comment line", "authserver localhost"]
    lines += [f"{key} {value}" for key, value in settings.items() if value is not None]
    (directory / "client.conf").write_text("\n".join(lines) + "\n")
    (directory / "servers").write_text("# host secret\nlocalhost other\n127.0.0.1 s3cret\n")
    return str(directory / "client.conf")


def test_radius_client_config_is_read_radiusclient_style(tmp_path):
    config = radius.read_client_config(write_client_config(tmp_path))
    assert (config.server, config.port, config.secret) == ("127.0.0.1", 11813, "s3cret")
    assert config.dictionary == str(tmp_path / "dictionary")
    assert (config.timeout, config.retries, config.bindaddr) == (2, 3, None)
    config = radius.read_client_config(write_client_config(tmp_path, acctserver="localhost", bindaddr="127.0.0.2"))
    assert (config.server, config.port, config.secret, config.bindaddr) == ("localhost", 1813, "other", "127.0.0.2")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"radius_timeout": None}, "radius_timeout is missing"),
        ({"radius_retries": "many"}, "radius_retries must be an integer"),
        ({"acctserver": "10.0.0.9"}, "no secret for 10.0.0.9"),
        ({"acctserver": "127.0.0.1:x"}, "bad port in acctserver"),
        ({"servers": "nowhere"}, "cannot read the servers file"),
    ],
)
def test_radius_client_config_errors(tmp_path, overrides, message):
    with pytest.raises(radius.RadiusConfigError, match=message):
        radius.read_client_config(write_client_config(tmp_path, **overrides))


def test_radcli_server_forms_and_client_server_pairs(tmp_path):
    forms = {
        "127.0.0.1:11813:inline": ("127.0.0.1", 11813, "inline"),
        "[::1]:1900:v6secret, 192.0.2.1": ("::1", 1900, "v6secret"),
        "[::1]::empty-port": ("::1", 1813, "empty-port"),
        "localhost, 192.0.2.9:1813": ("localhost", 1813, "other"),
    }
    for acctserver, (host, port, secret) in forms.items():
        config = radius.read_client_config(write_client_config(tmp_path, acctserver=acctserver))
        assert (config.server, config.port) == (host, port)
        if secret is not None:
            assert config.secret == secret
    path = write_client_config(tmp_path, acctserver="radius.example.com")
    (tmp_path / "servers").write_text("## Client/Server pair   Key\nnas.example.com/radius.example.com pair-secret\n")
    assert radius.read_client_config(path).secret == "pair-secret"
    with pytest.raises(radius.RadiusConfigError, match="without its"):
        radius.read_client_config(write_client_config(tmp_path, acctserver="[::1:1813"))


RADCLI_DICTIONARY = os.path.join(os.path.dirname(__file__), "data", "radcli", "dictionary")
OUR_DICTIONARY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "accounting", "radius", "dictionary")


def test_radclis_own_dictionary_loads_with_its_types_translated():
    dictionary = radius.load_dictionary(RADCLI_DICTIONARY, OUR_DICTIONARY)
    for name in radius.ATTRIBUTES:
        assert name in dictionary.attributes, name
    assert dictionary.attributes["NAS-IP-Address"].type == "ipaddr"  # ipv4addr there
    assert dictionary.attributes["Framed-IPv6-Prefix"].type == "ipv6prefix"
    assert dictionary.attributes["Expiration"].type == "date"
    assert dictionary.attributes["Sip-From-Tag"].code == 105 and dictionary.attributes["Sip-To-Tag"].code == 104
    assert dictionary.attributes["Acct-Status-Type"].values.HasForward("Update")  # radcli names 3 "Alive"; ours adds Update


def test_dictionary_includes_are_followed_bounded_and_named(tmp_path):
    from mediaproxy.accounting.radius_dictionary import DictionaryError, translated

    (tmp_path / "sub").mkdir()
    (tmp_path / "main").write_text("ATTRIBUTE\tUser-Name\t1\tstring # the user\n$INCLUDE sub/more\n$INCLUDE- absent\n")
    (tmp_path / "sub" / "more").write_text("ATTRIBUTE\tCounter\t200\tinteger64\nATTRIBUTE\tWhere\t201\tipv4addr\n")
    assert translated(str(tmp_path / "main")).read() == (
        "ATTRIBUTE\tUser-Name\t1\tstring\nATTRIBUTE\tCounter\t200\toctets\nATTRIBUTE\tWhere\t201\tipaddr\n"
    )
    (tmp_path / "loop").write_text("$INCLUDE loop\n")
    with pytest.raises(DictionaryError, match="nested more than"):
        translated(str(tmp_path / "loop"))
    (tmp_path / "broken").write_text("$INCLUDE nowhere\n")
    with pytest.raises(DictionaryError, match=r"cannot read .*nowhere \(included from .*broken:1\)"):
        translated(str(tmp_path / "broken"))


def test_radius_dictionary_must_define_every_attribute(tmp_path):
    # Acct-Status-Type is there: pyrad 2.1 refuses our dictionary's VALUEs for it otherwise
    (tmp_path / "dictionary").write_text("ATTRIBUTE\tUser-Name\t1\tstring\nATTRIBUTE\tAcct-Status-Type\t40\tinteger\n")
    path = write_client_config(tmp_path)
    additional = os.path.join(os.path.dirname(os.path.dirname(__file__)), "accounting", "radius", "dictionary")
    with pytest.raises(StartupError, match="lack the attributes Acct-Session-Id"):
        radius.RadiusBackend(path, additional)
    with pytest.raises(StartupError, match="additional dictionary"):
        radius.RadiusBackend(path, None)
    with pytest.raises(StartupError, match="cannot read the RADIUS configuration file"):
        radius.RadiusBackend(str(tmp_path / "absent.conf"), additional)


# -- SQL with SQLite (MariaDB and PostgreSQL: test_accounting_servers.py)


def database_config(dburi, **names):
    return configuration.DatabaseConfig(dburi=dburi, **names)


def test_dburi_is_required_and_checked():
    with pytest.raises(StartupError, match="Database accounting is enabled, but the database URI is not specified"):
        sql.SQLBackend(database_config(""))
    with pytest.raises(StartupError, match="invalid dburi|cannot load the database driver"):
        sql.SQLBackend(database_config("nosuchdb://user:pw@host/db"))


def test_sqlite_rows_are_written_once_even_with_a_null_to_tag(tmp_path):
    path = tmp_path / "accounting.sqlite"
    backend = sql.SQLBackend(database_config(f"sqlite://{path}"))
    first = typed(1, to_tag=None)
    assert backend.deliver(first) is None
    assert backend.deliver(first) == "already recorded; not written again"
    assert backend.deliver(typed(2)) is None
    assert backend.deliver(typed(2)) == "already recorded; not written again"
    backend.close()
    rows = sqlite3.connect(path).execute("SELECT call_id, from_tag, to_tag, info FROM media_sessions ORDER BY id").fetchall()
    assert [row[:3] for row in rows] == [("call-1@example.com", "ft1", None), ("call-2@example.com", "ft2", "tt2")]
    assert SessionRecord.from_json(json.loads(rows[0][3])) == first


def test_sqlite_table_and_column_names_are_configurable(tmp_path):
    path = tmp_path / "accounting.sqlite"
    names = {"sessions_table": "calls", "callid_column": "cid", "fromtag_column": "ftag", "totag_column": "ttag", "info_column": "stats"}
    backend = sql.SQLBackend(database_config(f"sqlite://{path}", **names))
    backend.deliver(typed(1))
    backend.close()
    (cid, ftag, ttag, stats) = sqlite3.connect(path).execute("SELECT cid, ftag, ttag, stats FROM calls").fetchone()
    assert (cid, ftag, ttag, json.loads(stats)["duration"]) == ("call-1@example.com", "ft1", "tt1", 62)
    index_sql = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE type = 'index'").fetchone()[0]
    assert "UNIQUE" in index_sql and "(cid, ftag, ttag)" in index_sql


def test_sqlite_dropped_table_is_created_again(tmp_path):
    path = tmp_path / "accounting.sqlite"
    backend = sql.SQLBackend(database_config(f"sqlite://{path}"))
    backend.deliver(typed(1))
    sqlite3.connect(path).execute("DROP TABLE media_sessions")
    assert backend.deliver(typed(2)) is None
    backend.close()
    assert sqlite3.connect(path).execute("SELECT call_id FROM media_sessions").fetchall() == [("call-2@example.com",)]


def test_sqlite_unreachable_database_is_unavailable_not_refused(tmp_path):
    backend = sql.SQLBackend(database_config(f"sqlite://{tmp_path}/missing-dir/accounting.sqlite"))
    with pytest.raises(BackendUnavailable):
        backend.deliver(typed(1))


def test_a_spooled_record_that_is_not_a_record_is_set_aside(tmp_path):
    with pytest.raises(ValueError, match="call_id"):
        typed(1, call_id=None)
    spool = Spool(str(tmp_path / "spool"))
    spool.append(record(1, call_id=None), now=1.0)  # a spool file edited by hand, or from a bug
    spool.append(record(2), now=2.0)
    backend = ScriptedBackend()
    queue = DeliveryQueue("test", backend, spool, task.Clock(), defer.maybeDeferred)
    queue.start()
    assert backend.delivered == ["call-2@example.com"] and queue.status()["rejected"] == 1
    assert sorted(os.listdir(tmp_path / "spool" / "rejected")) == ["000000000001.json", "000000000001.json.reason"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("[Dispatcher]\naccounting = database\n", "Database accounting is enabled, but the database URI is not specified"),
        (
            "[Dispatcher]\naccounting = radius\n[Radius]\nconfig_file = /nonexistent/client.conf\n",
            "cannot read the RADIUS configuration file",
        ),
        (
            "[Dispatcher]\naccounting = database\nspool_dir = /proc/mediaproxy-spool\n[Database]\ndburi = sqlite:///tmp/x.sqlite\n",
            "cannot create the accounting spool directory",
        ),
    ],
)
def test_dispatcher_refuses_to_start_with_unusable_accounting(tmp_path, settings, message):
    certgen.generate(str(tmp_path / "tls"))
    (tmp_path / "radius").mkdir()
    (tmp_path / "radius" / "dictionary").write_text(open(os.path.join(ROOT, "accounting", "radius", "dictionary")).read())
    (tmp_path / "config.ini").write_text(settings + f"[OpenSIPS]\nsocket_path = {tmp_path}/none.sock\n")
    command = [
        *program_command("media-dispatcher"),
        "--no-fork",
        "--config-dir",
        str(tmp_path),
        "--runtime-dir",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_table_is_created_when_the_plugin_starts(tmp_path):
    path = tmp_path / "accounting.sqlite"
    plugin = AccountingPlugin(
        "database", sql.SQLBackend(database_config(f"sqlite://{path}")), str(tmp_path / "spool"), task.Clock(), run=defer.maybeDeferred
    )
    plugin.start()
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert ("media_sessions",) in tables


@pytest.fixture
def tiny_disk(tmp_path):
    """A real filesystem of 64 KiB that the test can fill (tmpfs; needs root, as the suite has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "mp-test-disk", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(directory):
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError:
        pass  # full
    finally:
        os.close(descriptor)


def test_a_full_spool_disk_loses_no_record_and_keeps_the_order(tiny_disk):
    down = BackendUnavailable("connection refused")
    backend = ScriptedBackend([None, down])
    clock = task.Clock()
    spool = Spool(str(tiny_disk / "spool"))
    queue = DeliveryQueue("test", backend, spool, clock, defer.maybeDeferred)
    queue.start()
    queue.add(typed(0))  # spooled and delivered
    _fill(tiny_disk)
    queue.add(typed(1))  # backend down now: held in memory, in order
    queue.add(typed(2))
    assert queue.status()["held_in_memory"] == 2 and queue.status()["spooled"] == 2
    clock.advance(1)  # the backend is back: held records go straight from memory
    assert backend.delivered == [f"call-{n}@example.com" for n in range(3)]
    assert queue.status()["held_in_memory"] == 0
    # with the backend down and the disk full, records wait in memory and reach the spool once there is room
    backend.script = [down] * 4
    queue.add(typed(3))
    os.unlink(tiny_disk / "filler")
    clock.advance(5)
    assert queue.status()["held_in_memory"] == 0
    assert sorted(os.listdir(tiny_disk / "spool")) == ["000000000004.json", "rejected"]
    for _ in range(30):  # the backoff goes on: 4 s, then 8 s
        clock.advance(1)
    assert backend.delivered[-1] == "call-3@example.com" and os.listdir(tiny_disk / "spool") == ["rejected"]


def test_the_memory_hold_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "MAX_HELD", 2)
    spool = Spool(str(tmp_path / "spool"))

    def disk_full(entry, content):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "_write", disk_full)
    assert [spool.append(record(number), now=1.0).held for number in range(2)] == [True, True]
    assert spool.last_error.errno == 28
    with pytest.raises(SpoolFull):
        spool.append(record(3), now=1.0)
    assert spool.held == 2 and len(spool) == 2


def test_database_accounting_memory_stays_flat_over_20000_records(tmp_path):
    # on tmpfs when there is one: what is measured is our memory, not 20,000 fsyncs of this machine's disk
    directory = tempfile.mkdtemp(prefix="mp-", dir="/dev/shm") if os.path.isdir("/dev/shm") else str(tmp_path)
    backend = sql.SQLBackend(configuration.DatabaseConfig(dburi=f"sqlite://{directory}/accounting.sqlite"))
    backend.prepare()
    for number in range(2000):  # the connection, the driver and the statement caches warm up
        backend.deliver(typed(number))
    gc.collect()
    before = _resident()
    for number in range(2000, 22000):
        backend.deliver(typed(number))
    gc.collect()
    grown = _resident() - before
    backend.close()
    shutil.rmtree(directory, ignore_errors=True)
    assert grown < 1024 * 1024, f"{grown / 20000:.0f} bytes kept per record"  # 3.6 MB before the fix


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

"""Accounting against real servers: SQLite, MariaDB, PostgreSQL and FreeRADIUS, and their outages.

The dispatcher and relay run as real processes; each record is read back from the database or
the RADIUS server's detail file and compared field by field with the statistics the relay had.
"""

import io
import json
import os
import sqlite3

import psycopg2
import pymysql
import pytest
from deployment import Deployment, answered_call, call, establish, exchange, udp_endpoint, wait_until
from servers import FreeRADIUS, MariaDB, PostgreSQL
from test_accounting import record, typed
from twisted.logger import LogLevel, globalLogPublisher

from harness import ROOT, LogCollector, logged
from mediaproxy import configuration
from mediaproxy.accounting import sql
from mediaproxy.accounting.delivery import BackendUnavailable
from mediaproxy.cli import sessions as sessions_cli
from mediaproxy.testing import remove
from mediaproxy.wire.statistics import SessionRecord

PASSWORD = "mp-pass"
OUR_DICTIONARY = os.path.join(ROOT, "accounting", "radius", "dictionary")


def running(server_class, account: bool = True):
    """A server for the whole module, with the dispatcher's database account when it is a database."""
    server = server_class()
    try:
        server.start()
        if account:
            server.dburi = server.create_account("mediaproxy", PASSWORD)
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def mariadb():
    yield from running(MariaDB)


@pytest.fixture(scope="module")
def postgresql():
    yield from running(PostgreSQL)


@pytest.fixture(scope="module")
def freeradius():
    yield from running(FreeRADIUS, account=False)


class Database:
    """Where a test's rows go, and how to read them back with the server's own driver."""

    def __init__(self, kind, dburi, connect):
        self.kind, self.dburi, self.connect = kind, dburi, connect

    def rows(self, table):
        connection = self.connect()
        try:
            cursor = connection.cursor()
            cursor.execute(f"SELECT call_id, from_tag, to_tag, info FROM {table} ORDER BY id")
            return [
                (call_id, from_tag, to_tag, json.loads(info if isinstance(info, str) else bytes(info)))
                for call_id, from_tag, to_tag, info in cursor.fetchall()
            ]
        finally:
            connection.close()

    def count(self, table):
        try:
            return len(self.rows(table))
        except Exception:  # noqa: BLE001 - the table may not exist yet
            return 0


def mariadb_database(server):
    def connect():
        return pymysql.connect(host="127.0.0.1", port=server.port, user="mediaproxy", password=PASSWORD, database=server.database)

    return Database("mariadb", server.dburi, connect)


def postgresql_database(server):
    def connect():
        return psycopg2.connect(host="127.0.0.1", port=server.port, user="mediaproxy", password=PASSWORD, dbname=server.database)

    return Database("postgresql", server.dburi, connect)


@pytest.fixture(params=["sqlite", "mariadb", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "accounting.sqlite"
        return Database("sqlite", f"sqlite://{path}", lambda: sqlite3.connect(path))
    server = request.getfixturevalue(request.param)
    return mariadb_database(server) if request.param == "mariadb" else postgresql_database(server)


_tables = iter(range(1, 1000))


def fresh_table():
    return f"calls_{next(_tables)}"


def live_statistics(programs, call_id):
    (session,) = [item for item in json.loads(programs.management(b"sessions")) if item["call_id"] == call_id]
    return session


def assert_record_matches(stored, live, dialog_id="5:6"):
    """The stored record is the live statistics at the end of the call, plus the dispatcher's fields."""
    assert stored["dialog_id"] == dialog_id and stored["timed_out"] is False
    for field in ("call_id", "from_tag", "to_tag", "from_uri", "to_uri", "start_time", "caller_ua", "callee_ua", "username"):
        assert stored[field] == live[field], field
    assert live["duration"] <= stored["duration"] <= live["duration"] + 2
    assert len(stored["streams"]) == len(live["streams"])
    for stored_stream, live_stream in zip(stored["streams"], live["streams"]):
        assert stored_stream["status"] == "closed"
        assert "path" not in stored_stream  # only a live stream has one
        for field, value in live_stream.items():
            if field not in ("status", "end_time", "path"):
                assert stored_stream[field] == value, field


def media_call(programs, call_id, packets=25):
    """A call with real RTP both ways through the relay; returns its statistics just before it ends."""
    caller, callee = udp_endpoint(), udp_endpoint()
    proxy = programs.proxy()
    caller_facing, callee_facing = call(proxy, call_id, caller, callee, caller_agent="Alice phone 1.0", callee_agent="Bob phone 2.0")
    establish(caller, callee, caller_facing, callee_facing)
    exchange(caller, callee, caller_facing, callee_facing, packets)
    live = live_statistics(programs, call_id)
    assert live["streams"][0]["caller_packets"] >= packets and live["streams"][0]["callee_packets"] >= packets
    assert proxy.request(remove(call_id, "ft", "tt")) == "removed"
    proxy.close()
    caller.close()
    callee.close()
    return live


def test_database_row_matches_the_statistics(tmp_path, database):
    table = fresh_table()
    programs = Deployment(
        tmp_path,
        f"[Dispatcher]\naccounting = database\n[Database]\ndburi = {database.dburi}\nsessions_table = {table}\n",
    )
    try:
        programs.start()
        live = media_call(programs, f"db-{database.kind}-1@example.com")
        wait_until(lambda: database.count(table) == 1, f"the {database.kind} row")
        ((call_id, from_tag, to_tag, stored),) = database.rows(table)
        assert (call_id, from_tag, to_tag) == (live["call_id"], "ft", "tt")
        assert_record_matches(stored, live)
        accounting = json.loads(programs.management(b"accounting"))
        assert [(item["backend"], item["spooled"], item["delivered"]) for item in accounting] == [("database", 0, 1)]
    finally:
        programs.kill()


def test_radius_request_matches_the_statistics(tmp_path, freeradius):
    client_conf = freeradius.client_config(str(tmp_path / "radius"))
    assert_radius_record_matches(tmp_path, freeradius, client_conf, "radius-1@example.com")


RADCLI = "/etc/radcli"


def test_radius_with_debians_radcli_client_files(tmp_path, freeradius):
    """[Radius] config_file is Debian's radcli radiusclient.conf as it stands but for the server
    and its secret: its dictionary (/etc/radcli/dictionary, radcli's types) is read where it is."""
    if not os.path.exists(os.path.join(RADCLI, "radiusclient.conf")):
        pytest.fail("Debian's radcli files are not installed: apt-get install libradcli4 (.ci/run does this)", pytrace=False)
    shipped = open(os.path.join(RADCLI, "radiusclient.conf")).read()
    lines = []
    for line in shipped.splitlines():
        key = line.split(None, 1)[0] if line.strip() else ""
        if key == "acctserver":
            line = f"acctserver\t127.0.0.1:{freeradius.port}"
        elif key == "servers":
            line = f"servers\t\t{tmp_path}/servers"
        lines.append(line)
    (tmp_path / "servers").write_text(open(os.path.join(RADCLI, "servers")).read() + f"127.0.0.1\t{freeradius.secret}\n")
    client_conf = tmp_path / "radiusclient.conf"
    client_conf.write_text("\n".join(lines) + "\n")
    changed = [(old, new) for old, new in zip(shipped.splitlines(), lines) if old != new]
    assert [old.split()[0] for old, _ in changed] == ["acctserver", "servers"]  # nothing else touched
    assert ["dictionary", "/etc/radcli/dictionary"] in [line.split() for line in shipped.splitlines()]
    assert_radius_record_matches(tmp_path, freeradius, str(client_conf), "radcli-1@example.com")


def assert_radius_record_matches(tmp_path, freeradius, client_conf, call_id):
    """A call through the real programs reaches FreeRADIUS with every attribute, as its statistics say."""
    programs = Deployment(tmp_path, f"[Dispatcher]\naccounting = radius\n[Radius]\nconfig_file = {client_conf}\n")
    (programs.config / "radius").mkdir()
    (programs.config / "radius" / "dictionary").write_text(open(OUR_DICTIONARY).read())
    before = len(freeradius.records())
    try:
        programs.start()
        live = media_call(programs, call_id)
        wait_until(lambda: len(freeradius.records()) == before + 1, "the RADIUS accounting record")
        stored = freeradius.records()[-1]
        stream = live["streams"][0]
        assert stored["Acct-Status-Type"] == "Update"
        assert stored["User-Name"] == "alice"  # the From URI's user: the proxy signalled none
        assert stored["Acct-Session-Id"] == call_id
        assert (stored["Sip-From-Tag"], stored["Sip-To-Tag"]) == ("ft", "tt")
        assert live["duration"] <= int(stored["Acct-Session-Time"]) <= live["duration"] + 2
        assert int(stored["Acct-Input-Octets"]) == stream["caller_bytes"]
        assert int(stored["Acct-Output-Octets"]) == stream["callee_bytes"]
        assert stored["NAS-IP-Address"] == "127.0.0.1"
        assert stored["Sip-User-Agents"] == "Alice phone 1.0+Bob phone 2.0"
        # only streams that lasted a whole second count as applications; the call may be shorter
        assert stored.get("Sip-Applications") in ({"audio"} if live["duration"] >= 1 else {"audio", None})
        assert stored["Media-Codecs"] == "G711u"
        assert "Media-Info" not in stored  # an empty string is not sent on the wire
        assert int(stored["Acct-Delay-Time"]) == int(stream["post_dial_delay"])
    finally:
        programs.kill()


@pytest.mark.parametrize("kind", ["mariadb", "postgresql"])
def test_create_refused_logs_the_statement_and_records_wait(request, kind):
    """A user without CREATE rights: the statement is logged; once the operator runs it, the record goes in."""
    server = request.getfixturevalue(kind)
    table = fresh_table()
    if kind == "mariadb":
        dburi = server.create_account("limited", "limited-pw", "SELECT, INSERT")
    else:
        dburi = server.create_account("limited", "limited-pw", owner=False)
    backend = sql.SQLBackend(configuration.DatabaseConfig(dburi=dburi, sessions_table=table))
    collector = LogCollector()
    globalLogPublisher.addObserver(collector)
    try:
        with pytest.raises(BackendUnavailable, match=f"the table {table} does not exist and cannot be created"):
            backend.deliver(SessionRecord("limited-1", "ft"))
    finally:
        globalLogPublisher.removeObserver(collector)
    text = collector.text()
    assert "needs CREATE and ALTER rights" in text
    statement = text.split(sql.SCISSORS)[1].strip()
    assert statement.startswith(f"CREATE TABLE {table}")
    if kind == "mariadb":
        server.sql(statement, server.database)
    else:
        server.sql(statement)
        server.sql(f"GRANT SELECT, INSERT ON {table} TO limited; GRANT USAGE ON SEQUENCE {table}_id_seq TO limited")
    assert backend.deliver(SessionRecord("limited-1", "ft")) is None
    backend.close()
    assert server.sql(f"SELECT call_id FROM {table}", server.database) == [["limited-1"]]


def test_outage_loses_nothing_and_writes_nothing_twice(tmp_path, mariadb, freeradius):
    """RADIUS down, then MariaDB down too, 100 calls end, the dispatcher restarts; then both come back."""
    table = fresh_table()
    database = mariadb_database(mariadb)
    client_conf = freeradius.client_config(str(tmp_path / "radius"))
    programs = Deployment(
        tmp_path,
        f"[Dispatcher]\naccounting = database, radius\n[Database]\ndburi = {mariadb.dburi}\nsessions_table = {table}\n"
        f"[Radius]\nconfig_file = {client_conf}\n",
    )
    (programs.config / "radius").mkdir()
    (programs.config / "radius" / "dictionary").write_text(open(OUR_DICTIONARY).read())
    radius_before = {record["Acct-Session-Id"] for record in freeradius.records()}
    call_ids = [f"outage-{number}@example.com" for number in range(100)]
    try:
        programs.start()
        freeradius.stop()
        proxy = programs.proxy()
        for call_id in call_ids[:10]:
            answered_call(proxy, call_id, to_tag="" if call_id.endswith("7@example.com") else "tt")
        # one backend down does not hold the other back
        wait_until(lambda: database.count(table) == 10, "10 rows while RADIUS is down")
        mariadb.stop()
        for call_id in call_ids[10:50]:
            answered_call(proxy, call_id)
        proxy.close()
        wait_until(lambda: _spooled(programs) == {"database": 40, "radius": 50}, "the spool to hold every record")
        programs.dispatcher.wait_for_log("database accounting is unavailable")
        programs.restart_dispatcher()
        programs.dispatcher.wait_for_log("records left in the spool")
        proxy = programs.proxy()
        for call_id in call_ids[50:]:
            answered_call(proxy, call_id)
        proxy.close()
        wait_until(lambda: _spooled(programs) == {"database": 90, "radius": 100}, "the spool after the restart")
        status = {item["backend"]: item for item in json.loads(programs.management(b"accounting"))}
        assert status["radius"]["state"] == "unavailable" and status["radius"]["oldest_age"] is not None
        shown = io.StringIO()
        assert sessions_cli.main(["summary", "--no-tls", "--port", str(programs.management_port)], shown) == 0
        rows = {line.split()[0]: line.split()[1:3] for line in shown.getvalue().split("Accounting\n")[1].splitlines()[2:]}
        assert rows == {"database": ["unavailable", "90"], "radius": ["unavailable", "100"]}
        mariadb.start()
        freeradius.start()
        wait_until(lambda: _spooled(programs) == {"database": 0, "radius": 0}, "the spool to drain", timeout=120)
    finally:
        programs.kill()
    rows = database.rows(table)
    assert sorted(row[0] for row in rows) == sorted(call_ids)
    assert [row[0] for row in rows] == call_ids  # in the order the calls ended
    radius_ids = [record["Acct-Session-Id"] for record in freeradius.records() if record["Acct-Session-Id"] not in radius_before]
    assert sorted(radius_ids) == sorted(call_ids)


def _spooled(programs):
    try:
        return {item["backend"]: item["spooled"] for item in json.loads(programs.management(b"accounting"))}
    except OSError:
        return None


def run_script(database, name):
    connection = database.connect()
    try:
        cursor = connection.cursor()
        results = []
        for statement in read_accounting("sql", name).split(";"):
            if any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines()):
                cursor.execute(statement)
                results.append([tuple(row) for row in cursor.fetchall()] if cursor.description else None)
        connection.commit()
        return results
    finally:
        connection.close()


def read_accounting(*parts):
    with open(os.path.join(ROOT, "accounting", *parts)) as file:
        return file.read()


def test_schema_files_and_example_queries(database):
    """The operator's CREATE TABLE file makes a table the dispatcher writes to; the example queries answer."""
    schema = {"sqlite": "sqlite.sql", "mariadb": "mysql.sql", "postgresql": "postgresql.sql"}[database.kind]
    queries = {"sqlite": "queries-sqlite.sql", "mariadb": "queries-mysql.sql", "postgresql": "queries-postgresql.sql"}[database.kind]
    # an operator runs the file on a database without the table
    run_script_statement(database, "DROP TABLE IF EXISTS media_sessions")
    run_script(database, schema)
    backend = sql.SQLBackend(configuration.DatabaseConfig(dburi=database.dburi))
    for example in example_records():
        assert backend.deliver(example) is None
    backend.close()
    user_calls, traffic, peak, one_way, timed_out, codecs = (result for result in run_script(database, queries) if result is not None)
    assert [row[0] for row in user_calls] == ["call-3@example.com", "call-1@example.com"]
    assert [(str(day), relay, int(calls), int(caller), int(callee)) for day, relay, calls, caller, callee in traffic] == [
        ("2026-11-10", "198.51.100.1", 1, 1066560, 533280),
        ("2026-11-24", "203.0.113.5", 2, 2 * 1066560, 533280),
    ]
    assert [int(concurrent) for _, concurrent in peak] == [2]  # calls 1 and 2 overlap
    assert [(row[0], row[5]) for row in one_way] == [("call-2@example.com", "callee")]
    assert timed_out == [("call-2@example.com", "no-traffic timeout", "5:6")]
    assert sorted((codec, int(count)) for codec, count in codecs) == [("G711u", 2), ("Unknown", 2)]
    run_script_statement(database, "DROP TABLE media_sessions")


def example_records():
    """Alice's answered call, Carol's one-way call that timed out the same day, Alice's call on another relay two weeks before."""
    first = typed(1, username="alice", relay="203.0.113.5", end_reason="bye")
    one_way = record(
        2, from_uri="carol@example.com", username="carol", relay="203.0.113.5", timed_out=True, end_reason="no-traffic timeout"
    )
    one_way["streams"][0].update(callee_packets=0, callee_bytes=0)
    earlier = typed(3, username="alice", relay="198.51.100.1", start_time=1795557764.485 - 14 * 86400, end_reason="bye")
    return [first, SessionRecord.from_json(one_way), earlier]


def test_a_table_of_an_earlier_version_gets_the_search_columns(database):
    """A table with only the original four columns (and a record in it) gains the search columns and
    their indexes at the dispatcher's start; the old row stays, new rows fill the columns."""
    table = fresh_table()
    info_type = {"sqlite": "BLOB", "mariadb": "MEDIUMBLOB", "postgresql": "BYTEA"}[database.kind]
    key = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "mariadb": "INT PRIMARY KEY AUTO_INCREMENT", "postgresql": "SERIAL PRIMARY KEY"}
    run_script_statement(
        database,
        f"CREATE TABLE {table} (id {key[database.kind]}, call_id VARCHAR(255) NOT NULL, from_tag VARCHAR(64) NOT NULL, "
        f"to_tag VARCHAR(64), info {info_type})",
    )
    run_script_statement(database, f"INSERT INTO {table} (call_id, from_tag, to_tag, info) VALUES ('old', 'ft', 'tt', NULL)")
    backend = sql.SQLBackend(configuration.DatabaseConfig(dburi=database.dburi, sessions_table=table))
    with logged() as logs:
        assert backend.deliver(typed(1, username="alice", relay="203.0.113.5")) is None
    backend.close()
    assert any("Added the search columns start_time, duration, username" in line for line in logs.at(LogLevel.info))
    connection = database.connect()
    try:
        cursor = connection.cursor()
        cursor.execute(f"SELECT call_id, username, relay, caller_packets, callee_bytes FROM {table} ORDER BY id")
        assert [tuple(row) for row in cursor.fetchall()] == [
            ("old", None, None, None, None),
            ("call-1@example.com", "alice", "203.0.113.5", 3100, 533280),
        ]
    finally:
        connection.close()
    # a second start finds everything in place and says nothing of it
    backend = sql.SQLBackend(configuration.DatabaseConfig(dburi=database.dburi, sessions_table=table))
    with logged() as logs:
        assert backend.deliver(typed(2)) is None
    backend.close()
    assert not any("search columns" in line or "index" in line for line in logs.at(LogLevel.info) + logs.at(LogLevel.warn))
    connection = database.connect()
    try:
        cursor = connection.cursor()
        cursor.execute(f"SELECT count(*), count(start_time) FROM {table}")
        assert tuple(cursor.fetchone()) == (3, 2)
    finally:
        connection.close()


def run_script_statement(database, statement):
    connection = database.connect()
    try:
        connection.cursor().execute(statement)
        connection.commit()
    finally:
        connection.close()

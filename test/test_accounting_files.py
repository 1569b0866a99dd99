"""The operator files in accounting/: the SQLite schema and example queries run as written."""

import json
import os
import sqlite3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*parts):
    with open(os.path.join(ROOT, "accounting", *parts)) as stream:
        return stream.read()


def test_sqlite_schema_and_example_queries():
    db = sqlite3.connect(":memory:")
    db.executescript(read("sql", "sqlite.sql"))
    info = {
        "call_id": "c1",
        "from_uri": "alice@example.com",
        "to_uri": "bob@example.com",
        "start_time": 1795557764.0,  # 2026-11-24
        "duration": 62,
        "timed_out": True,
        "dialog_id": "1:2",
        "streams": [{"caller_local": "203.0.113.5:40000", "caller_bytes": 100, "callee_bytes": 50, "caller_codec": "G711u"}],
    }
    db.execute(
        "INSERT INTO media_sessions (call_id, from_tag, to_tag, info) VALUES (?, ?, ?, ?)", ("c1", "f", "t", json.dumps(info).encode())
    )
    results = [db.execute(statement).fetchall() for statement in read("sql", "queries-sqlite.sql").split(";") if "SELECT" in statement]
    user_calls, traffic, timed_out, codecs = results
    assert [row[0] for row in user_calls] == ["c1"]
    assert traffic == [("203.0.113.5", 150)]
    assert timed_out == [("c1", "1:2")]
    assert codecs == [("G711u", 1)]


def test_radius_dictionary_defines_mediaproxy_attributes():
    text = read("radius", "dictionary")
    for name, number in [("Media-Codecs", 233), ("Media-Info", 234), ("Sip-User-Agents", 235), ("Sip-Applications", 236)]:
        assert f"ATTRIBUTE\t{name}" in text and f"\t{number}\tstring" in text
    assert "VALUE\tAcct-Status-Type\tUpdate\t\t3" in text

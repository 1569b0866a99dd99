"""The example accounting queries (accounting/sql/queries-*.sql) timed on a table of N calls, on
SQLite, MariaDB and PostgreSQL side by side.

The table is the one the dispatcher creates (its SQLBackend makes it, with the search columns
and indexes); the rows are 100 days of calls ending 2026-11-30 from 1,000 users over 4 relays,
with about 5% one-way audio and 3% media timeouts, each with a record as the dispatcher stores
it. Each query runs once to warm the caches, then ``--runs`` times; the median is reported.

    bench/accounting_queries.py [--rows 200000] [--runs 5] [--databases sqlite,mariadb,postgresql]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

from servers import MariaDB, PostgreSQL  # noqa: E402

from mediaproxy import configuration  # noqa: E402
from mediaproxy.accounting import sql  # noqa: E402

END = 1796083200  # 2026-12-01 00:00 UTC
DAYS = 100
TARGET_MS = 50
QUERY_FILES = {"sqlite": "queries-sqlite.sql", "mariadb": "queries-mysql.sql", "postgresql": "queries-postgresql.sql"}
ACCOUNT = {"user": "mediaproxy", "password": "bench-pw"}
COLUMNS = ("call_id", "from_tag", "to_tag", "info", *sql.SEARCH_COLUMNS)


def rows(count: int, seed: int = 1):
    """``count`` calls as table rows, oldest first."""
    chance = random.Random(seed)
    relays = [f"203.0.113.{number}" for number in range(1, 5)]
    for number in range(count):
        start = END - DAYS * 86400 + number * (DAYS * 86400 / count) + chance.random()
        user = "alice" if number % 997 == 0 else f"user{chance.randrange(1000)}"
        duration = int(chance.expovariate(1 / 180))
        packets = duration * 50
        one_way = chance.random() < 0.05
        timed_out = chance.random() < 0.03
        caller_packets, callee_packets = packets, 0 if one_way else packets
        relay = chance.choice(relays)
        stream = {
            "media_type": "audio",
            "status": "closed",
            "timeout_wait": 0,
            "caller_codec": chance.choice(("PCMU", "PCMA", "opus", "G722")),
            "callee_codec": "PCMU",
            "start_time": 0,
            "end_time": duration,
            "post_dial_delay": 1.5,
            "caller_bytes": caller_packets * 200,
            "callee_bytes": callee_packets * 200,
            "caller_packets": caller_packets,
            "callee_packets": callee_packets,
            "caller_local": f"{relay}:40000",
            "callee_local": f"{relay}:40002",
            "caller_remote": "192.0.2.10:6000",
            "callee_remote": "198.51.100.20:7000",
        }
        end_reason = "no-traffic timeout" if timed_out else "bye"
        record = {
            "call_id": f"{number}-bench@example.com",
            "from_tag": f"ft{number}",
            "to_tag": f"tt{number}",
            "from_uri": f"{user}@example.com",
            "to_uri": "bob@example.com",
            "start_time": start,
            "duration": duration,
            "caller_ua": "Bench phone 1.0",
            "callee_ua": "Bench phone 2.0",
            "username": user,
            "end_reason": end_reason,
            "dialog_id": f"{number}:1",
            "streams": [stream],
            "timed_out": timed_out,
            "relay": relay,
        }
        yield (
            record["call_id"],
            record["from_tag"],
            record["to_tag"],
            json.dumps(record),
            start,
            duration,
            user,
            relay,
            end_reason,
            caller_packets,
            callee_packets,
            caller_packets * 200,
            callee_packets * 200,
        )


def queries(kind: str) -> list[tuple[str, str]]:
    """(title, statement) of each example query; statements that return nothing (SET) have no title."""
    text = (ROOT / "accounting" / "sql" / QUERY_FILES[kind]).read_text()
    found = []
    for statement in text.split(";"):
        lines = statement.strip().splitlines()
        code = [line for line in lines if line.strip() and not line.strip().startswith("--")]
        if not code:
            continue
        # a query's title is its comment's line; a line in parentheses is a note on it
        titles = [line.strip("- ").split(" (")[0].rstrip(".") for line in lines if line.startswith("--") and not line.startswith("-- (")]
        found.append((titles[-1] if titles and code[0].upper().startswith(("SELECT", "WITH")) else "", statement))
    return found


class Database:
    def __init__(self, kind: str, dburi: str, connect, server=None) -> None:
        self.kind, self.dburi, self.connect, self.server = kind, dburi, connect, server

    def fill(self, count: int) -> None:
        backend = sql.SQLBackend(configuration.DatabaseConfig(dburi=self.dburi))
        backend.prepare()  # the table as the dispatcher makes it
        backend.close()
        marks = ", ".join("?" if self.kind == "sqlite" else "%s" for _ in COLUMNS)
        statement = f"INSERT INTO media_sessions ({', '.join(COLUMNS)}) VALUES ({marks})"
        connection = self.connect()
        cursor = connection.cursor()
        batch = []
        for row in rows(count):
            batch.append(row if self.kind == "sqlite" else (*row[:3], row[3].encode(), *row[4:]))
            if len(batch) == 5000:
                cursor.executemany(statement, batch)
                batch = []
        if batch:
            cursor.executemany(statement, batch)
        connection.commit()
        connection.close()
        self.analyze()

    def analyze(self) -> None:
        connection = self.connect()
        if self.kind == "postgresql":
            connection.autocommit = True
        connection.cursor().execute(
            {"sqlite": "ANALYZE", "mariadb": "ANALYZE TABLE media_sessions"}.get(self.kind, "VACUUM ANALYZE media_sessions")
        )
        if self.kind != "postgresql":
            connection.commit()
        connection.close()

    def time(self, runs: int) -> list[tuple[str, float, int]]:
        """(title, median ms, rows) of each example query."""
        connection = self.connect()
        cursor = connection.cursor()
        results = []
        for title, statement in queries(self.kind):
            cursor.execute(statement)
            found = cursor.fetchall() if cursor.description else []  # warm
            if not title:
                continue
            timings = []
            for _ in range(runs):
                started = time.perf_counter()
                cursor.execute(statement)
                found = cursor.fetchall()
                timings.append((time.perf_counter() - started) * 1000)
            results.append((title, statistics.median(timings), len(found)))
        connection.close()
        return results


def open_databases(kinds: list[str], directory: str) -> list[Database]:
    import psycopg2  # only what the run needs
    import pymysql

    opened = []
    for kind in kinds:
        if kind == "sqlite":
            path = f"{directory}/accounting.sqlite"
            opened.append(Database(kind, f"sqlite://{path}", lambda path=path: sqlite3.connect(path)))
        elif kind in ("mariadb", "postgresql"):
            server_class, connect = {
                "mariadb": (MariaDB, lambda port: pymysql.connect(host="127.0.0.1", port=port, database="accounting", **ACCOUNT)),
                "postgresql": (PostgreSQL, lambda port: psycopg2.connect(host="127.0.0.1", port=port, dbname="accounting", **ACCOUNT)),
            }[kind]
            server = server_class()
            server.start()
            uri = server.create_account(ACCOUNT["user"], ACCOUNT["password"])
            opened.append(Database(kind, uri, lambda connect=connect, port=server.port: connect(port), server))
        else:
            raise SystemExit(f"unknown database {kind!r}: sqlite, mariadb or postgresql")
    return opened


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--databases", default="sqlite,mariadb,postgresql")
    args = parser.parse_args()
    kinds = args.databases.split(",")
    with tempfile.TemporaryDirectory(prefix="mp-bench-accounting-") as directory:
        databases = []
        try:
            databases = open_databases(kinds, directory)
            timings = {}
            for database in databases:
                started = time.monotonic()
                database.fill(args.rows)
                print(f"{database.kind}: {args.rows} rows loaded in {time.monotonic() - started:.0f} s", flush=True)
                timings[database.kind] = database.time(args.runs)
        finally:
            for database in databases:
                if database.server is not None:
                    database.server.remove()
    print(f"\nExample queries at {args.rows} rows, median of {args.runs} runs (ms; target < {TARGET_MS}):\n")
    titles = [title for title, _, _ in timings[kinds[0]]]
    print("| query | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    slow = 0
    for number, title in enumerate(titles):
        cells = []
        for kind in kinds:
            _, median, found = timings[kind][number]
            slow += median >= TARGET_MS
            cells.append(f"{median:.1f} ({found} rows)")
        print(f"| {title} | " + " | ".join(cells) + " |")
    print(f"\n{slow} of {len(titles) * len(kinds)} timings at or over {TARGET_MS} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Database accounting through SQLObject: one row per call, the statistics as JSON in ``info``.

Runs in the accounting worker thread only. Inserting is idempotent on (call_id, from_tag, to_tag)
— a row already there means an earlier attempt reached the database before the dispatcher could
tell, so it is not written again. The lookup also covers a NULL to_tag, which a unique index
does not.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from urllib.parse import urlsplit

import sqlobject
from sqlobject import dberrors
from sqlobject.cache import CacheSet
from sqlobject.col import Col

from mediaproxy.accounting.delivery import BackendUnavailable, RecordRejected
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.process import StartupError
from mediaproxy.wire.statistics import SessionRecord

log = Logger(namespace="accounting")

SCISSORS = "----------------- >8 -----------------"
ALREADY_RECORDED = "already recorded; not written again"
DRIVER_HINTS = {
    "mysql": "PyMySQL or mysqlclient (Debian: python3-pymysql)",
    "postgres": "psycopg2 (Debian: python3-psycopg2)",
    "postgresql": "psycopg2 (Debian: python3-psycopg2)",
}
_registries = iter(range(1, 1 << 62))


# Columns beside the original four, filled from the record so that operators' questions (a user's
# calls, traffic per day and relay, one-way audio, peak concurrency, media timeouts) are answered
# from indexes instead of parsing every row's JSON. Their names are fixed.
SEARCH_COLUMNS = (
    "start_time",
    "duration",
    "username",
    "relay",
    "end_reason",
    "caller_packets",
    "callee_packets",
    "caller_bytes",
    "callee_bytes",
)


def table_class(config, connection, search_columns: bool = True) -> type:
    """An SQLObject class for the configured table and column names, private to one connection;
    without ``search_columns``, only the original four (a table the database user cannot extend)."""

    class sqlmeta:  # noqa: N801 - SQLObject's own spelling
        table = config.sessions_table
        registry = f"mediaproxy-accounting-{next(_registries)}"
        cacheValues = False

    attributes = {
        "sqlmeta": sqlmeta,
        "_connection": connection,
        "call_id": sqlobject.StringCol(dbName=config.callid_column, length=255, notNone=True),
        "from_tag": sqlobject.StringCol(dbName=config.fromtag_column, length=64, notNone=True),
        "to_tag": sqlobject.StringCol(dbName=config.totag_column, length=64, default=None),
        "info": _info_column(config, connection),
        "callid_idx": sqlobject.DatabaseIndex("call_id", "from_tag", "to_tag", unique=True),
    }
    if search_columns:
        attributes.update(
            {
                # Unix seconds; DOUBLE PRECISION because MySQL's FLOAT would round them to minutes
                "start_time": Col(sqlType="DOUBLE PRECISION", default=None),
                "duration": sqlobject.IntCol(default=None),
                "username": sqlobject.StringCol(length=64, default=None),
                "relay": sqlobject.StringCol(length=64, default=None),
                "end_reason": sqlobject.StringCol(length=32, default=None),
                **{name: sqlobject.BigIntCol(default=None) for name in SEARCH_COLUMNS[5:]},
                # time ranges read the traffic from the index alone; a user's calls; why calls ended
                "started_idx": sqlobject.DatabaseIndex(
                    "start_time", "relay", "caller_packets", "callee_packets", "caller_bytes", "callee_bytes"
                ),
                "user_idx": sqlobject.DatabaseIndex("username", "start_time"),
                "reason_idx": sqlobject.DatabaseIndex("end_reason", "start_time"),
            }
        )
    return type("MediaSession", (sqlobject.SQLObject,), attributes)


def search_values(record: SessionRecord) -> dict:
    """The search columns' values for ``record`` (strings cut to their columns' lengths)."""
    caller_packets, callee_packets, caller_bytes, callee_bytes = record.totals()
    return {
        "start_time": record.start_time,
        "duration": int(record.duration),
        "username": None if record.username is None else record.username[:64],
        "relay": record.relay,
        "end_reason": None if record.end_reason is None else record.end_reason[:32],
        "caller_packets": int(caller_packets),
        "callee_packets": int(callee_packets),
        "caller_bytes": int(caller_bytes),
        "callee_bytes": int(callee_bytes),
    }


def _info_column(config, connection):
    if connection.dbName == "sqlite":
        # SQLObject would base64-encode a BLOB on SQLite; JSON text keeps json_extract() usable
        return sqlobject.StringCol(dbName=config.info_column, sqlType="BLOB")
    return sqlobject.BLOBCol(dbName=config.info_column, length=2**24 - 1)


def connect(dburi: str):
    """An SQLObject connection (nothing is contacted yet); StartupError on a bad URI or missing driver."""
    if not dburi:
        raise StartupError("Database accounting is enabled, but the database URI is not specified")
    scheme = urlsplit(dburi).scheme
    try:
        connection = sqlobject.connectionForURI(_with_mysql_driver(dburi))
    except ImportError as error:
        hint = DRIVER_HINTS.get(scheme, f"a driver for {scheme}")
        raise StartupError(f"Database accounting: cannot load the database driver for {scheme} ({error}); install {hint}") from None
    except (AssertionError, KeyError, ValueError, TypeError) as error:
        raise StartupError(f"Database accounting: invalid dburi {_without_password(dburi)}: {error}") from None
    connection.cache = CacheSet(cache=False)
    return connection


MYSQL_DRIVERS = (("MySQLdb", "mysqldb"), ("pymysql", "pymysql"), ("mysql.connector", "connector"), ("mariadb", "mariadb"))


def _with_mysql_driver(dburi: str) -> str:
    """Name an installed MySQL driver: SQLObject's own default list stops at one it does not know."""
    parts = urlsplit(dburi)
    if parts.scheme != "mysql" or "driver=" in parts.query:
        return dburi
    driver = _installed_mysql_driver()
    return f"{dburi}{'&' if parts.query else '?'}driver={driver}" if driver else dburi


def _installed_mysql_driver() -> str | None:
    loaded = sys.modules.get("MySQLdb")
    if loaded is not None and loaded.__name__ != "MySQLdb":
        return "pymysql"  # PyMySQL posing as MySQLdb once SQLObject has installed it so
    for module, driver in MYSQL_DRIVERS:
        try:
            if importlib.util.find_spec(module) is not None:
                return driver
        except ImportError:
            continue
    return None


def _without_password(dburi: str) -> str:
    parts = urlsplit(dburi)
    if parts.password is None:
        return dburi
    return dburi.replace(f":{parts.password}@", ":********@", 1)


class SQLBackend:
    def __init__(self, config) -> None:
        self.config = config
        # drivers' deprecation notices about how SQLObject calls them are not the operator's business
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"sqlobject\.")
        self.connection = connect(config.dburi)
        self.table = table_class(config, self.connection)
        self.search_columns = True  # False while the table lacks them and cannot be given them
        self.where = _without_password(config.dburi)
        self.text_info = self.connection.dbName == "sqlite"
        self.table_ready = False
        self.statement_logged = False

    def create_statements(self) -> str:
        create, constraints = self.table.createTableSQL(connection=self.connection)
        return ";\n".join([create, *constraints]) + ";"

    def prepare(self) -> None:
        """At start-up: make sure the table exists (BackendUnavailable when the database cannot be reached)."""
        self.ensure_table()

    def ensure_table(self) -> None:
        if self.table_ready:
            return
        try:
            exists = self.table.tableExists()
        except Exception as error:  # noqa: BLE001 - every driver has its own connection errors
            raise self._unavailable(error) from None
        if not exists:
            try:
                self.table.createTable(ifNotExists=True)
            except Exception as error:  # noqa: BLE001
                self._explain_create_failure(error)
                raise self._unavailable(error, f"the table {self.config.sessions_table} does not exist and cannot be created") from None
            log.info("Created the accounting table {table} in {where}", table=self.config.sessions_table, where=self.where)
        else:
            self._extend()
        self.table_ready = True

    def _extend(self) -> None:
        """Gives a table made by an earlier version (or the original MediaProxy) the search columns
        and their indexes. A database user without ALTER rights gets one error with the statements
        to run, and the records go on in the original four columns."""
        connection, table = self.connection, self.config.sessions_table
        missing = [name for name in SEARCH_COLUMNS if not self._has_column(name)]
        columns = self.table.sqlmeta.columns
        # the connection writes each column's definition in its own dialect, as CREATE TABLE does
        added = [f"ALTER TABLE {table} ADD COLUMN {connection.createColumn(self.table, columns[name])}" for name in missing]
        indexes = self._missing_indexes()
        try:
            for statement in added:
                connection.query(statement)
        except Exception as error:  # noqa: BLE001 - every driver words a refusal its own way
            self._use_original_columns(error, added + indexes)
            return
        if added:
            log.info("Added the search columns {names} to {table}", names=", ".join(missing), table=table)
        try:
            for statement in indexes:
                connection.query(statement)
        except Exception as error:  # noqa: BLE001
            log.warn(
                "Cannot index the accounting table {table} ({error}); the example queries will be slow until this is run:\n{sql}",
                table=table,
                error=_message(error),
                sql=";\n".join(indexes) + ";",
            )

    def _missing_indexes(self) -> list[str]:
        """The statements creating the search indexes that may be missing."""
        connection, table = self.connection, self.config.sessions_table
        mysql = connection.dbName == "mysql"
        try:  # MySQL has no CREATE INDEX IF NOT EXISTS: ask which it has
            existing = {str(row[2]) for row in connection.queryAll(f"SHOW INDEX FROM {table}")} if mysql else set()
        except Exception:  # noqa: BLE001
            existing = set()
        statements = []
        for index in self.table.sqlmeta.indexes:
            if index.unique or index.name in existing:
                continue
            statement = connection.createIndexSQL(self.table, index)
            statements.append(statement if mysql else statement.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1))
        return statements

    def _has_column(self, name: str) -> bool:
        try:
            self.connection.queryAll(f"SELECT {name} FROM {self.config.sessions_table} WHERE 1 = 0")
        except Exception:  # noqa: BLE001 - the driver's "no such column"
            return False
        return True

    def _use_original_columns(self, error: Exception, statements: list[str]) -> None:
        log.error(
            "Cannot add the search columns to the accounting table {table}: {error}. Records go on in its original columns; "
            "for the example queries, run as a user with ALTER rights:\n{scissors}\n{sql}\n{scissors}",
            table=self.config.sessions_table,
            error=_message(error),
            scissors=SCISSORS,
            sql=";\n".join(statements) + ";",
        )
        self.search_columns = False
        self.table = table_class(self.config, self.connection, search_columns=False)

    def _explain_create_failure(self, error: Exception) -> None:
        if self.statement_logged:
            return
        self.statement_logged = True
        log.error(
            "Cannot create the accounting table {table}: {error}. The database user needs CREATE and ALTER rights, "
            "or create the table by hand with:\n{scissors}\n{sql}\n{scissors}",
            table=self.config.sessions_table,
            error=_message(error),
            scissors=SCISSORS,
            sql=self.create_statements(),
        )

    def deliver(self, record: SessionRecord) -> str | None:
        self.ensure_table()
        try:
            return self._insert(record)
        except BackendUnavailable:
            if not self._table_vanished():
                raise
        # the table was dropped under us: create it again and retry once
        self.table_ready = False
        self.ensure_table()
        return self._insert(record)

    def _table_vanished(self) -> bool:
        try:
            return not self.table.tableExists()
        except Exception:  # noqa: BLE001 - the database is unreachable: not a vanished table
            return False

    def _insert(self, record: SessionRecord) -> str | None:
        call_id, from_tag, to_tag = record.call_id, record.from_tag, record.to_tag
        columns = self.table.q
        try:
            already = self.table.select(
                sqlobject.AND(columns.call_id == call_id, columns.from_tag == from_tag, columns.to_tag == to_tag)
            ).count()
            if already:
                return ALREADY_RECORDED
            info = json.dumps(record.as_json())
            searched = search_values(record) if self.search_columns else {}
            self.table(call_id=call_id, from_tag=from_tag, to_tag=to_tag, info=info if self.text_info else info.encode(), **searched)
            # even with caching off SQLObject keeps a weak reference per inserted row, forever
            self.connection.cache.clear(self.table)
        except dberrors.DuplicateEntryError:
            return ALREADY_RECORDED
        except (dberrors.DataError, dberrors.IntegrityError) as error:
            raise RecordRejected(f"the database refuses the record: {_message(error)}") from None
        except Exception as error:  # noqa: BLE001 - connection loss surfaces as many driver-specific types
            raise self._unavailable(error) from None
        return None

    def _unavailable(self, error: Exception, what: str | None = None) -> BackendUnavailable:
        self.connection.close()  # a broken connection goes back to the pool; drop them all
        return BackendUnavailable(f"{what or self.where}: {_message(error)}")

    def close(self) -> None:
        self.connection.close()


def _message(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

"""Real MariaDB, PostgreSQL and FreeRADIUS servers on loopback, started and stopped by the tests.

Each server lives in its own temporary directory and can be stopped and started again on the
same data (the outage tests). A missing server program fails the test with what to install:
nothing is skipped silently.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from harness import ROOT, free_port

PG_BIN = "/usr/lib/postgresql/15/bin"
READY_TIMEOUT = 60.0


def require(program: str, package: str) -> str:
    path = shutil.which(program) or (os.path.join(PG_BIN, program) if os.path.exists(os.path.join(PG_BIN, program)) else None)
    if path is None:
        pytest.fail(f"{program} is not installed: apt-get install {package} (.ci/run does this)", pytrace=False)
    return path


def wait_until(condition, what: str, process: subprocess.Popen, log_path: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            with open(log_path, errors="replace") as log:
                output = log.read()[-4000:]
            raise AssertionError(f"{what} did not become ready (exit code {process.poll()}):\n{output}")
        time.sleep(0.05)


def tcp_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Server:
    name = "server"

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix=f"mp-{self.name}-")
        self.log_path = os.path.join(self.directory, "server.log")
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def popen_options(self) -> dict:
        return {}

    def start(self) -> None:
        log = open(self.log_path, "a")  # the child keeps writing to it
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, **self.popen_options())
        log.close()
        wait_until(self.ready, self.name, self.process, self.log_path)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class MariaDB(Server):
    name = "mariadb"
    database = "accounting"
    user = "mediaproxy"
    password = "mp-secret"

    def __init__(self) -> None:
        self.daemon = require("mariadbd", "mariadb-server")
        self.install = require("mariadb-install-db", "mariadb-server")
        self.client = require("mariadb", "mariadb-client")
        super().__init__()
        self.port = free_port()
        self.socket = os.path.join(self.directory, "mysqld.sock")
        self.data = os.path.join(self.directory, "data")
        subprocess.run(
            [
                self.install,
                "--no-defaults",
                f"--datadir={self.data}",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ],
            check=True,
            capture_output=True,
        )

    def command(self) -> list[str]:
        return [
            self.daemon,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={os.path.join(self.directory, 'mysqld.pid')}",
            "--user=root",
            "--skip-log-bin",
            "--innodb-flush-log-at-trx-commit=2",
        ]

    def ready(self) -> bool:
        return subprocess.run([self.client, f"--socket={self.socket}", "-u", "root", "-e", "SELECT 1"], capture_output=True).returncode == 0

    def sql(self, statement: str, database: str | None = None) -> list[list[str]]:
        command = [self.client, f"--socket={self.socket}", "-u", "root", "--batch", "--skip-column-names", "-e", statement]
        if database:
            command.append(database)
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        return [line.split("\t") for line in result.stdout.splitlines()]

    def create_account(self, user: str, password: str, privileges: str = "ALL PRIVILEGES") -> str:
        self.sql(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        self.sql(f"CREATE USER IF NOT EXISTS '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
        self.sql(f"GRANT {privileges} ON {self.database}.* TO '{user}'@'127.0.0.1'")
        return f"mysql://{user}:{password}@127.0.0.1:{self.port}/{self.database}"


class PostgreSQL(Server):
    """PostgreSQL refuses to run as root, so the server runs as the postgres system user."""

    name = "postgresql"
    database = "accounting"

    def __init__(self) -> None:
        self.daemon = require("postgres", "postgresql")
        self.initdb = require("initdb", "postgresql")
        self.client = require("psql", "postgresql-client")
        super().__init__()
        os.chmod(self.directory, 0o755)
        shutil.chown(self.directory, "postgres", "postgres")
        self.port = free_port()
        self.data = os.path.join(self.directory, "data")
        subprocess.run(
            [self.initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            user="postgres",
        )

    def popen_options(self) -> dict:
        return {"user": "postgres", "cwd": self.directory}

    def command(self) -> list[str]:
        return [self.daemon, "-D", self.data, "-k", self.directory, "-h", "127.0.0.1", "-p", str(self.port), "-c", "fsync=off"]

    def ready(self) -> bool:
        return tcp_open(self.port) and self._psql("SELECT 1", "postgres").returncode == 0

    def _psql(self, statement: str, database: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.client, "-h", self.directory, "-p", str(self.port), "-U", "postgres", "-d", database, "-At", "-F", "\t", "-c", statement],
            capture_output=True,
            text=True,
        )

    def sql(self, statement: str, database: str | None = None) -> list[list[str]]:
        result = self._psql(statement, database or self.database)
        if result.returncode != 0:
            raise AssertionError(f"psql failed: {result.stderr}")
        return [line.split("\t") for line in result.stdout.splitlines()]

    def create_account(self, user: str, password: str, owner: bool = True) -> str:
        if not self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'", "postgres"):
            self.sql(f"CREATE DATABASE {self.database}", "postgres")
        self.sql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'", "postgres")
        if owner:
            self.sql(f"GRANT ALL ON SCHEMA public TO {user}")
        return f"postgres://{user}:{password}@127.0.0.1:{self.port}/{self.database}"


RADIUS_CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {directory}
raddbdir = {directory}
radacctdir = {directory}/acct
name = freeradius
confdir = ${{raddbdir}}
modconfdir = ${{confdir}}/mods-config
run_dir = {directory}
db_dir = ${{raddbdir}}
libdir = /usr/lib/freeradius
pidfile = ${{run_dir}}/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 4096
hostname_lookups = no
log {{
    destination = files
    file = ${{logdir}}/radius.log
}}
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = 0
    status_server = no
}}
thread pool {{
    start_servers = 1
    max_servers = 2
    min_spare_servers = 1
    max_spare_servers = 2
    max_requests_per_server = 0
}}
client localhost {{
    ipaddr = 127.0.0.1
    secret = {secret}
}}
modules {{
    detail {{
        filename = ${{radacctdir}}/detail
        permissions = 0600
        header = "%t"
    }}
}}
server default {{
    listen {{
        type = acct
        ipaddr = 127.0.0.1
        port = {port}
    }}
    accounting {{
        detail
    }}
}}
"""

# The OpenSIPS attributes are not in FreeRADIUS's default dictionary (their numbers clash with
# RFC 5090); an operator adds them, and ours, to the server's local dictionary just like this.
RADIUS_LOCAL_DICTIONARY = """\
ATTRIBUTE\tSip-To-Tag\t104\tstring
ATTRIBUTE\tSip-From-Tag\t105\tstring
$INCLUDE {ours}
"""

# The client's main dictionary, radiusclient style, pulling in the standard and OpenSIPS files.
# FreeRADIUS's dictionary.rfc2865 has a 'vsa' attribute pyrad 2.1 (Debian bookworm) cannot parse:
# the RFC 2865 attributes a record uses, and the one dictionary.openser gives values to, are
# written out instead.
CLIENT_DICTIONARY = """\
ATTRIBUTE\tUser-Name\t1\tstring
ATTRIBUTE\tNAS-IP-Address\t4\tipaddr
ATTRIBUTE\tService-Type\t6\tinteger
$INCLUDE /usr/share/freeradius/dictionary.rfc2866
$INCLUDE /usr/share/freeradius/dictionary.openser
"""


class FreeRADIUS(Server):
    name = "freeradius"
    secret = "mp-testing-secret"

    def __init__(self) -> None:
        self.daemon = require("freeradius", "freeradius")
        super().__init__()
        self.port = free_port(socket.SOCK_DGRAM)
        self.detail_path = os.path.join(self.directory, "acct", "detail")
        os.makedirs(os.path.dirname(self.detail_path))
        with open(os.path.join(self.directory, "radiusd.conf"), "w") as file:
            file.write(RADIUS_CONF.format(directory=self.directory, secret=self.secret, port=self.port))
        with open(os.path.join(self.directory, "dictionary"), "w") as file:
            file.write(RADIUS_LOCAL_DICTIONARY.format(ours=os.path.join(ROOT, "accounting", "radius", "dictionary")))

    def command(self) -> list[str]:
        return [self.daemon, "-f", "-d", self.directory]

    def ready(self) -> bool:
        try:
            with open(os.path.join(self.directory, "radius.log")) as log:
                return "Ready to process requests" in log.read()
        except FileNotFoundError:
            return False

    def start(self) -> None:
        # a restart must wait for its own "ready" line, not the previous run's
        log_path = os.path.join(self.directory, "radius.log")
        if os.path.exists(log_path):
            os.replace(log_path, log_path + f".{time.monotonic_ns()}")
        super().start()

    def client_config(self, directory: str, timeout: int = 1, retries: int = 1) -> str:
        """Write a radiusclient-style client.conf (with servers and dictionary files) for this server."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "servers"), "w") as file:
            file.write(f"# host secret\n127.0.0.1 {self.secret}\n")
        with open(os.path.join(directory, "dictionary"), "w") as file:
            file.write(CLIENT_DICTIONARY)
        path = os.path.join(directory, "client.conf")
        with open(path, "w") as file:
            file.write(
                f"# radiusclient configuration\nacctserver 127.0.0.1:{self.port}\nservers servers\ndictionary dictionary\n"
                f"radius_timeout {timeout}\nradius_retries {retries}\nbindaddr *\n"
            )
        return path

    def records(self) -> list[dict[str, str]]:
        """The detail file's records: attribute name -> value text (quotes removed)."""
        try:
            with open(self.detail_path) as file:
                text = file.read()
        except FileNotFoundError:
            return []
        records = []
        for block in text.split("\n\n"):
            record = {}
            for line in block.splitlines():
                if line.startswith("\t") and " = " in line:
                    name, _, value = line.strip().partition(" = ")
                    record[name] = value[1:-1] if value.startswith('"') and value.endswith('"') else value
            if record:
                records.append(record)
        return records

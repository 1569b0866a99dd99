"""The Debian packages as an operator gets them: build, inspect (dpkg-deb, lintian, the units),
install, run through the package's init scripts unprivileged, a call through Kamailio with
accounting, upgrade, remove, purge.

This installs the packages on the machine (with Debian's own python3 packages) and purges them
again at the end; CI runs it as root on a throw-away machine. The second run of test/run, on
the installed packages, skips it: the packages are installed already.
"""

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import threading
import time

import pytest
from deployment import Proxy, wait_until
from netns import (
    NAT_CALLEE_IP,
    NAT_CALLER_IP,
    NAT_PUBLIC_IP,
    NAT_RELAY_IP,
    in_namespace,
    relay_behind_nat,
    require_root_and_tools,
    rtp,
    udp_socket,
)
from servers import FreeRADIUS

from harness import INSTALLED, ROOT, free_port
from mediaproxy.cli.sessions import query, tls_context
from mediaproxy.demo import run as demo
from mediaproxy.demo import sip as demo_sip
from mediaproxy.relay.plane.conntrack import Conntrack
from mediaproxy.testing import remove, update

pytestmark = pytest.mark.skipif(INSTALLED, reason="the packages are installed already (the first run of test/run built and tested them)")

PACKAGES = ("mediaproxy-common", "mediaproxy-dispatcher", "mediaproxy-relay")


def run(*command, check=True, timeout=600, **options):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def require_tools():
    if os.geteuid() != 0:
        pytest.fail("the package test installs packages: it needs root (CI runs as root)", pytrace=False)
    for tool, package in (("dpkg-buildpackage", "dpkg-dev"), ("dh", "debhelper"), ("lintian", "lintian"), ("fakeroot", "fakeroot")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install {package} (.ci/run does this)", pytrace=False)
    if run("dpkg", "-s", "dh-python", check=False).returncode != 0:
        pytest.fail("dh-python is missing: apt-get install dh-python (.ci/run does this)", pytrace=False)


UPGRADE_VERSION = "5.0.0+mptest1"


def build_packages(directory, version=None):
    source = directory / "mediaproxy"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "mediaproxy-demo", "dropin.cache"
    )
    shutil.copytree(ROOT, source, ignore=ignore)
    if version is not None:  # the same code as a newer version, to see what an upgrade does
        changelog = source / "debian" / "changelog"
        text = changelog.read_text()
        changelog.write_text(re.sub(r"^mediaproxy \([^)]*\)", f"mediaproxy ({version})", text, count=1))
    run("dpkg-buildpackage", "-us", "-uc", "-b", cwd=source)
    found = {path.name.split("_")[0]: path for path in directory.glob("*.deb")}
    assert sorted(found) == sorted(PACKAGES)
    return found


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    require_tools()
    build = tmp_path_factory.mktemp("debian-build")
    return build, build_packages(build)


@pytest.fixture(scope="module")
def upgrade_debs(tmp_path_factory):
    require_tools()
    return build_packages(tmp_path_factory.mktemp("debian-upgrade-build"), UPGRADE_VERSION)


def contents(deb):
    return {line.split()[-1].lstrip(".") for line in run("dpkg-deb", "-c", str(deb)).stdout.splitlines()}


def field(deb, name):
    return run("dpkg-deb", "-f", str(deb), name).stdout.strip()


def test_package_contents_and_metadata(debs):
    build, found = debs
    common, dispatcher, relay = (contents(found[name]) for name in PACKAGES)
    assert {"/etc/mediaproxy/config.ini", "/etc/mediaproxy/radius/dictionary", "/etc/mediaproxy/tls/README"} <= common
    assert {"/usr/share/mediaproxy/accounting/sql/mysql.sql", "/usr/share/mediaproxy/accounting/radius/dictionary"} <= common
    assert "/usr/lib/python3/dist-packages/mediaproxy/relay/plane/kernel.py" in common
    assert {"/usr/bin/media-sessions", "/usr/share/man/man1/media-sessions.1.gz"} <= common
    assert not [path for path in common if path.endswith((".key", ".pem", ".crt", "dropin.cache"))]  # no keys, no caches
    for name, files in (("dispatcher", dispatcher), ("relay", relay)):
        assert {f"/usr/bin/media-{name}", f"/etc/init.d/mediaproxy-{name}", f"/lib/systemd/system/mediaproxy-{name}.service"} <= files
        assert f"/usr/share/man/man1/media-{name}.1.gz" in files
    for package in PACKAGES:
        assert field(found[package], "Architecture") == "all"
    depends = field(found["mediaproxy-common"], "Depends")
    for dependency in (
        "python3-twisted",
        "python3-openssl",
        "python3-sqlobject",
        "python3-pyrad",
        "python3-pyroute2",
        "python3-prometheus-client",
    ):
        assert dependency in depends
    assert "mediaproxy-common (= 5.0.0)" in field(found["mediaproxy-relay"], "Depends")
    conffiles = run("dpkg-deb", "-I", str(found["mediaproxy-common"]), "conffiles").stdout.split()
    assert "/etc/mediaproxy/config.ini" in conffiles
    lint = run("lintian", "--fail-on", "error", *map(str, found.values()), check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert " E: " not in lint.stdout


UNITS = {name: f"/lib/systemd/system/mediaproxy-{name}.service" for name in ("dispatcher", "relay")}
CAP_NET_ADMIN = 1 << 12
SYSCTLS = ("net/ipv4/ip_forward", "net/netfilter/nf_conntrack_acct")


def host_state():
    values = {}
    for name in SYSCTLS:
        with open(f"/proc/sys/{name}") as file:
            values[name] = file.read().strip()
    return values, run("nft", "list", "tables").stdout


@contextlib.contextmanager
def services_allowed():
    """Container images forbid maintainer scripts to start or stop services (policy-rc.d exit 101);
    an operator's machine does not, and that is what is tested."""
    path = "/usr/sbin/policy-rc.d"
    saved = path + ".mp-test" if os.path.lexists(path) else None
    if saved:
        os.rename(path, saved)
    try:
        yield
    finally:
        if saved:
            os.rename(saved, path)


class SyslogCapture:
    """Daemonised, the programs log to /dev/log: the test stands in for the syslog daemon."""

    PATH = "/dev/log"

    def __init__(self):
        self.saved = self.PATH + ".mp-test" if os.path.lexists(self.PATH) else None
        if self.saved:
            os.rename(self.PATH, self.saved)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.PATH)
        os.chmod(self.PATH, 0o666)
        self.socket.settimeout(0.2)
        self.lines = []
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.closed:
            try:
                self.lines.append(self.socket.recv(65536).decode("utf-8", "replace"))
            except TimeoutError:
                continue
            except OSError:
                return

    def text(self, program=None):
        return "\n".join(line for line in list(self.lines) if program is None or f"{program}[" in line)

    def close(self):
        self.closed = True
        self.thread.join(timeout=5)
        self.socket.close()
        os.unlink(self.PATH)
        if self.saved:
            os.rename(self.saved, self.PATH)


def pid_of(name):
    with open(f"/run/mediaproxy/media-{name}.pid") as file:
        return int(file.read())


def process_status(pid):
    with open(f"/proc/{pid}/status") as file:
        return dict(line.split(":\t", 1) for line in file.read().splitlines() if ":\t" in line)


def running_programs():
    result = run("pgrep", "-f", "^/usr/bin/python3 /usr/bin/media-(dispatcher|relay)", check=False)
    return result.stdout.split()


def configure(relay_port, management_port, radius_config):
    configure_sections(
        {
            "Relay": f"dispatchers = 127.0.0.1:{relay_port}\nrelay_ip = 127.0.0.1\nport_range = 45000:45200\n",
            "Dispatcher": f"listen = 127.0.0.1:{relay_port}\nlisten_management = 127.0.0.1:{management_port}\naccounting = database, radius\n",
            "TLS": "verify_interval = 1\n",
            "Database": "dburi = sqlite:///var/lib/mediaproxy/accounting.sqlite\n",
            "Radius": f"config_file = {radius_config}\n",
        }
    )


def configure_sections(sections):
    """Options put at the top of their sections of the installed config.ini, the rest left as shipped."""
    path = "/etc/mediaproxy/config.ini"
    with open(path) as file:
        text = file.read()
    for section, options in sections.items():
        text = text.replace(f"[{section}]\n", f"[{section}]\n{options}", 1)
    with open(path, "w") as file:
        file.write(text)


def sessions(management_port):
    (answer,) = query("127.0.0.1", management_port, ["sessions"], tls_context("/etc/mediaproxy/tls"))
    return answer


def summary(management_port, namespace=()):
    result = run(*namespace, "media-sessions", "summary", "--json", "--config-dir", "/etc/mediaproxy", check=False)
    return json.loads(result.stdout)["summary"] if result.returncode == 0 else None


def service(name, action, check=True):
    return run(f"/etc/init.d/mediaproxy-{name}", action, check=check, timeout=60)


def exposure(unit):
    result = run("systemd-analyze", "security", "--offline=true", unit)
    return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout).group(1))


def test_operator_lifecycle(debs, upgrade_debs, tmp_path):
    """Install, configure, a call through Kamailio with SQL and RADIUS accounting, upgrade, remove, purge."""
    build, found = debs
    for program, package in (("kamailio", "kamailio"), ("sipp", "sip-tester"), ("setpriv", "util-linux")):
        if shutil.which(program) is None:
            pytest.fail(f"{program} is missing: apt-get install {package} (test/run does this)", pytrace=False)
    if run("dpkg", "-s", "mediaproxy-common", check=False).returncode == 0:
        pytest.fail("mediaproxy-common is already installed on this machine; the test would replace it", pytrace=False)
    upgrade = upgrade_debs
    before = host_state()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    radius = FreeRADIUS()
    radius.start()
    kamailio_groups = None
    with services_allowed():
        syslog = SyslogCapture()
        try:
            run("apt-get", "install", "-y", "-q", *(str(found[name]) for name in PACKAGES), env=env, timeout=900)
            assert running_programs() == []  # nothing starts before it is configured

            # as installed: the secrets are the daemons' group's only, the units verified and hardened
            config = os.stat("/etc/mediaproxy/config.ini")
            assert stat.S_IMODE(config.st_mode) == 0o640 and config.st_uid == 0
            assert grp.getgrgid(config.st_gid).gr_name == "mediaproxy"
            verified = run("systemd-analyze", "verify", *UNITS.values(), check=False)
            problems = [line for line in verified.stderr.splitlines() if "mediaproxy" in line]
            assert verified.returncode == 0 and not problems, verified.stderr
            for unit in UNITS.values():
                assert exposure(unit) <= 3.0, run("systemd-analyze", "security", "--offline=true", unit).stdout

            run("mediaproxy-gen-certs", "/etc/mediaproxy/tls")
            radius_config = radius.client_config("/etc/mediaproxy/radius-client")
            relay_port, management_port = free_port(), free_port()
            configure(relay_port, management_port, radius_config)
            service("dispatcher", "start")
            service("relay", "start")
            wait_until(lambda: (summary(management_port) or [{}])[0].get("status") == "active", "the relay to connect", timeout=30)

            # unprivileged: no capability for the dispatcher, CAP_NET_ADMIN alone for the relay
            for name, capabilities in (("dispatcher", 0), ("relay", CAP_NET_ADMIN)):
                status = process_status(pid_of(name))
                assert status["Uid"].split()[0] == str(pwd.getpwnam("mediaproxy").pw_uid), (name, status["Uid"])
                assert int(status["CapEff"], 16) == capabilities and int(status["CapBnd"], 16) == capabilities, name
            for path in ("/run/mediaproxy/dispatcher.sock", "/run/mediaproxy/opensips.sock"):
                info = os.stat(path)
                assert stat.S_IMODE(info.st_mode) == 0o660 and grp.getgrgid(info.st_gid).gr_name == "mediaproxy", path

            # Kamailio as its own unprivileged user, allowed in through the group mediaproxy
            kamailio_groups = [group.gr_name for group in grp.getgrall() if "kamailio" in group.gr_mem]
            run("adduser", "--quiet", "kamailio", "mediaproxy")
            call_directory = tmp_path / "call"
            call_directory.mkdir()
            os.chmod(tmp_path, 0o755)
            os.chmod(call_directory, 0o755)
            statistics = demo_sip.call(
                str(call_directory),
                "/run/mediaproxy/dispatcher.sock",
                lambda: sessions(management_port),
                1.0,
                demo.endpoints,
                demo.talk,
                user="kamailio",
            )
            (stream,) = statistics["streams"]
            assert stream["caller_packets"] > 0 and stream["callee_packets"] > 0, stream

            # both accounting records are written, by the unprivileged dispatcher
            def sql_rows():
                try:
                    with contextlib.closing(sqlite3.connect("/var/lib/mediaproxy/accounting.sqlite")) as connection:
                        return connection.execute("SELECT call_id FROM media_sessions").fetchall()
                except sqlite3.Error:
                    return []

            wait_until(lambda: sql_rows() == [(statistics["call_id"],)], "the SQL accounting record", timeout=30)
            wait_until(
                lambda: [record["Acct-Session-Id"] for record in radius.records()] == [statistics["call_id"]],
                "the RADIUS accounting record",
                timeout=30,
            )

            # SIGUSR1 switches DEBUG on; the TLS re-checks (every second) then show in the log
            for name in ("dispatcher", "relay"):
                os.kill(pid_of(name), signal.SIGUSR1)
            for name in ("dispatcher", "relay"):
                wait_until(
                    lambda name=name: syslog.text(f"media-{name}").count("Re-checking the certificates") >= 3,
                    f"three TLS re-checks of the {name}",
                    timeout=30,
                )
                os.kill(pid_of(name), signal.SIGUSR1)
                wait_until(lambda name=name: "Log level is now INFO" in syslog.text(f"media-{name}"), "DEBUG off", timeout=10)
            for name in ("dispatcher", "relay"):
                logged = syslog.text(f"media-{name}")
                assert "Traceback" not in logged and "CRITICAL" not in logged and "ERROR" not in logged, logged[-5000:]

            # an upgrade restarts what runs, on the new version; a call in progress outlives it
            proxy = Proxy("/run/mediaproxy/dispatcher.sock")
            assert proxy.request(update("upgrade-survivor", "ft", media="audio:127.0.0.1:9:sendrecv:ice=no")) != "error"
            assert (
                proxy.request(update("upgrade-survivor", "ft", "tt", kind="reply", media="audio:127.0.0.1:11:sendrecv:ice=no")) != "error"
            )
            proxy.close()
            pids = {name: pid_of(name) for name in ("dispatcher", "relay")}
            run("apt-get", "install", "-y", "-q", *(str(upgrade[name]) for name in PACKAGES), env=env, timeout=900)
            assert run("dpkg-query", "-W", "-f", "${Version}", "mediaproxy-relay").stdout == UPGRADE_VERSION
            for name in ("dispatcher", "relay"):
                assert service(name, "status", check=False).returncode == 0, name
                assert pid_of(name) != pids[name], name
            wait_until(lambda: (summary(management_port) or [{}])[0].get("status") == "active", "the relay to reconnect", timeout=30)
            assert "Took back 1 sessions kept from the last run" in syslog.text("media-relay")
            assert [record["call_id"] for record in sessions(management_port)] == ["upgrade-survivor"]
            proxy = Proxy("/run/mediaproxy/dispatcher.sock")
            assert proxy.request(remove("upgrade-survivor", "ft", "tt")) == "removed"
            proxy.close()
            wait_until(lambda: len(sql_rows()) == 2, "the record of the call that outlived the upgrade", timeout=30)

            # removing stops both; the relay's host changes are undone
            run("apt-get", "remove", "-y", "-q", *PACKAGES, env=env, timeout=300)
            assert running_programs() == []
            assert host_state() == before
        finally:
            for name in ("relay", "dispatcher"):
                if os.access(f"/etc/init.d/mediaproxy-{name}", os.X_OK):
                    service(name, "stop", check=False)
            shutil.rmtree("/etc/mediaproxy/radius-client", ignore_errors=True)
            if kamailio_groups is not None and "mediaproxy" not in kamailio_groups:
                run("gpasswd", "-d", "kamailio", "mediaproxy", check=False)
            run("apt-get", "purge", "-y", "-q", *PACKAGES, env=env, timeout=300)
            syslog.close()
            radius.remove()
    for path in (
        "/etc/mediaproxy",
        "/usr/lib/python3/dist-packages/mediaproxy",
        "/var/spool/mediaproxy",
        "/var/lib/mediaproxy",
        "/run/mediaproxy",
    ):
        assert not os.path.exists(path), f"{path} is left after purge"
    assert running_programs() == []
    assert run("getent", "passwd", "mediaproxy", check=False).returncode != 0
    assert host_state() == before


UPGRADE_CALLS = 50
CONNTRACK_MARK = 0x4D50  # the relay's default conntrack_mark


def test_upgrade_keeps_kernel_forwarded_media_flowing(debs, upgrade_debs, tmp_path):
    """The packaged programs, started by their init scripts in the relay's namespace of a NAT
    topology, forward 50 calls in the kernel. The media goes on in 20 ms steps while the packages
    are upgraded (the maintainer scripts stop and start both programs): no packet is lost or
    reordered. The new relay takes every session back, and each record counts the whole call."""
    build, found = debs
    require_root_and_tools()
    if run("dpkg", "-s", "mediaproxy-common", check=False).returncode == 0:
        pytest.fail("mediaproxy-common is already installed on this machine; the test would replace it", pytrace=False)
    before = host_state()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    network = relay_behind_nat()
    namespace = network.name("relay")
    inside = ("ip", "netns", "exec", namespace)
    parties = [
        (udp_socket(network.name("caller"), (NAT_CALLER_IP, 5100 + n)), udp_socket(network.name("callee"), (NAT_CALLEE_IP, 7100 + n)))
        for n in range(UPGRADE_CALLS)
    ]
    facing = []
    sent = 0

    def exchange(rounds):
        nonlocal sent
        for _ in range(rounds):
            sent += 1
            for (caller, callee), (to_caller_side, to_callee_side) in zip(parties, facing):
                caller.sendto(rtp(sent, 0), to_caller_side)
                assert callee.recvfrom(2048) == (rtp(sent, 0), to_callee_side), f"round {sent}"
                callee.sendto(rtp(sent, 8), to_callee_side)
                assert caller.recvfrom(2048) == (rtp(sent, 8), to_caller_side), f"round {sent}"

    def listed():
        return in_namespace(namespace, sessions, management_port)

    def kernel_entries():
        return in_namespace(namespace, lambda: Conntrack(CONNTRACK_MARK).snapshot())

    with services_allowed():
        syslog = SyslogCapture()
        try:
            run("apt-get", "install", "-y", "-q", *(str(found[name]) for name in PACKAGES), env=env, timeout=900)
            run("mediaproxy-gen-certs", "/etc/mediaproxy/tls")
            relay_port, management_port = free_port(), free_port()
            configure_sections(
                {
                    "Relay": f"dispatchers = 127.0.0.1:{relay_port}\nrelay_ip = {NAT_RELAY_IP}\nforwarding = kernel\nport_range = 45000:45400\n",
                    "Dispatcher": f"listen = 127.0.0.1:{relay_port}\nlisten_management = 127.0.0.1:{management_port}\naccounting = database\n",
                    "Database": "dburi = sqlite:///var/lib/mediaproxy/accounting.sqlite\n",
                }
            )
            for name in ("dispatcher", "relay"):
                run(*inside, f"/etc/init.d/mediaproxy-{name}", "start", timeout=60)
            wait_until(lambda: (summary(management_port, inside) or [{}])[0].get("status") == "active", "the relay to connect", timeout=30)

            proxy = Proxy("/run/mediaproxy/dispatcher.sock")
            for number, (caller, callee) in enumerate(parties):
                call_id = f"upgrade-{number}@example.com"
                offer = proxy.request(
                    update(
                        call_id,
                        "ft",
                        media=f"audio:{NAT_CALLER_IP}:{5100 + number}:sendrecv:ice=no",
                        dialog_id=f"1:{number}",
                        signaling_ip=NAT_PUBLIC_IP,
                    )
                )
                answer = proxy.request(
                    update(
                        call_id,
                        "ft",
                        "tt",
                        kind="reply",
                        media=f"audio:{NAT_CALLEE_IP}:{7100 + number}:sendrecv:ice=no",
                        dialog_id=f"1:{number}",
                        signaling_ip=NAT_CALLEE_IP,
                    )
                )
                to_caller_side, to_callee_side = (NAT_RELAY_IP, int(answer.split()[1])), (NAT_RELAY_IP, int(offer.split()[1]))
                facing.append((to_caller_side, to_callee_side))
                callee.sendto(rtp(0, 8), to_callee_side)  # nowhere to go yet: the caller is not learnt
                caller.sendto(rtp(0, 0), to_caller_side)
                assert callee.recvfrom(2048)[0] == rtp(0, 0)
            proxy.close()
            exchange(5)
            wait_until(lambda: len(kernel_entries()) == UPGRADE_CALLS, "every call forwarded in the kernel")

            pids = {name: pid_of(name) for name in ("dispatcher", "relay")}
            upgrade = subprocess.Popen(
                [*inside, "apt-get", "install", "-y", "-q", *(str(upgrade_debs[name]) for name in PACKAGES)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            try:
                rounds = 0
                while upgrade.poll() is None and rounds < 30_000:  # 10 minutes at most
                    exchange(1)
                    rounds += 1
                    time.sleep(0.02)  # media's own pace, not a wait for anything
            finally:
                output, _ = upgrade.communicate(timeout=900)
            assert upgrade.returncode == 0, output[-3000:]
            assert run("dpkg-query", "-W", "-f", "${Version}", "mediaproxy-relay").stdout == UPGRADE_VERSION
            relay_log = syslog.text("media-relay")
            assert f"Keeping {UPGRADE_CALLS} sessions for the next start" in relay_log
            assert pid_of("relay") != pids["relay"] and pid_of("dispatcher") != pids["dispatcher"]
            wait_until(lambda: f"Took back {UPGRADE_CALLS} sessions" in syslog.text("media-relay"), "the sessions taken back", timeout=30)
            # both programs restarted: the relay finds the new dispatcher within seconds
            wait_until(lambda: len(listed()) == UPGRADE_CALLS, "the calls listed again", timeout=5)
            exchange(5)
            assert "Removed" not in syslog.text("media-relay")  # no entry of ours was flushed

            proxy = Proxy("/run/mediaproxy/dispatcher.sock")
            for number in range(UPGRADE_CALLS):
                assert proxy.request(remove(f"upgrade-{number}@example.com", "ft", "tt")) == "removed"
            proxy.close()

            def records():
                try:
                    with contextlib.closing(sqlite3.connect("/var/lib/mediaproxy/accounting.sqlite")) as connection:
                        return [json.loads(info) for (info,) in connection.execute("SELECT info FROM media_sessions")]
                except sqlite3.Error:
                    return []

            wait_until(lambda: len(records()) == UPGRADE_CALLS, "every record", timeout=30)
            for record in records():
                (stream,) = record["streams"]
                # the first packet each way, then every round (the callee's first had nowhere to go)
                assert (stream["caller_packets"], stream["callee_packets"]) == (1 + sent, sent), record["call_id"]
                assert record["end_reason"] == "bye"
        finally:
            for name in ("relay", "dispatcher"):
                if os.access(f"/etc/init.d/mediaproxy-{name}", os.X_OK):
                    run(*inside, f"/etc/init.d/mediaproxy-{name}", "stop", check=False, timeout=60)
            run("apt-get", "purge", "-y", "-q", *PACKAGES, env=env, timeout=300)
            syslog.close()
            for caller, callee in parties:
                caller.close()
                callee.close()
            network.remove()
    assert running_programs() == []
    assert host_state() == before

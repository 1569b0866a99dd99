"""The Debian packages: build, inspect (dpkg-deb, lintian), install, run through init.d, purge.

This installs the packages on the machine (as an operator would, with Debian's own python3
packages) and purges them again at the end; CI runs it as root on a throw-away machine.
"""

import json
import os
import shutil
import subprocess

import pytest
from deployment import wait_until

from harness import ROOT, free_port

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


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    require_tools()
    build = tmp_path_factory.mktemp("debian-build")
    source = build / "mediaproxy"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "mediaproxy-demo", "dropin.cache"
    )
    shutil.copytree(ROOT, source, ignore=ignore)
    run("dpkg-buildpackage", "-us", "-uc", "-b", cwd=source)
    found = {path.name.split("_")[0]: path for path in build.glob("*.deb")}
    assert sorted(found) == sorted(PACKAGES)
    return build, found


def contents(deb):
    return {line.split()[-1].lstrip(".") for line in run("dpkg-deb", "-c", str(deb)).stdout.splitlines()}


def field(deb, name):
    return run("dpkg-deb", "-f", str(deb), name).stdout.strip()


def test_package_contents_and_metadata(debs):
    build, found = debs
    common, dispatcher, relay = (contents(found[name]) for name in PACKAGES)
    assert {"/etc/mediaproxy/config.ini", "/etc/mediaproxy/radius/dictionary", "/etc/mediaproxy/tls/README"} <= common
    assert {"/usr/share/mediaproxy/accounting/sql/mysql.sql", "/usr/share/mediaproxy/accounting/radius/dictionary"} <= common
    assert "/usr/lib/python3/dist-packages/mediaproxy/relay/forwarding/kernel.py" in common
    assert {"/usr/bin/media-sessions", "/usr/share/man/man1/media-sessions.1.gz"} <= common
    assert not [path for path in common if path.endswith((".key", ".pem", ".crt", "dropin.cache"))]  # no keys, no caches
    for name, files in (("dispatcher", dispatcher), ("relay", relay)):
        assert {f"/usr/bin/media-{name}", f"/etc/init.d/mediaproxy-{name}", f"/lib/systemd/system/mediaproxy-{name}.service"} <= files
        assert f"/usr/share/man/man1/media-{name}.1.gz" in files
    for package in PACKAGES:
        assert field(found[package], "Architecture") == "all"
    depends = field(found["mediaproxy-common"], "Depends")
    for dependency in ("python3-twisted", "python3-openssl", "python3-sqlobject", "python3-pyrad", "python3-pyroute2"):
        assert dependency in depends
    assert "mediaproxy-common (= 5.0.0)" in field(found["mediaproxy-relay"], "Depends")
    conffiles = run("dpkg-deb", "-I", str(found["mediaproxy-common"]), "conffiles").stdout.split()
    assert "/etc/mediaproxy/config.ini" in conffiles
    lint = run("lintian", "--fail-on", "error", *map(str, found.values()), check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert " E: " not in lint.stdout


def configure(relay_port, management_port):
    path = "/etc/mediaproxy/config.ini"
    with open(path) as file:
        text = file.read()
    text = text.replace(
        "[Relay]\n",
        f"[Relay]\ndispatchers = 127.0.0.1:{relay_port}\nrelay_ip = 127.0.0.1\nport_range = 45000:45200\nforwarding = userspace\n",
        1,
    )
    text = text.replace(
        "[Dispatcher]\n", f"[Dispatcher]\nlisten = 127.0.0.1:{relay_port}\nlisten_management = 127.0.0.1:{management_port}\n", 1
    )
    with open(path, "w") as file:
        file.write(text)


def summary(management_port):
    result = run("media-sessions", "summary", "--json", "--port", str(management_port), "--config-dir", "/etc/mediaproxy", check=False)
    return json.loads(result.stdout)["summary"] if result.returncode == 0 else None


def service(name, action, check=True):
    return run(f"/etc/init.d/mediaproxy-{name}", action, check=check, timeout=60)


def test_install_run_through_init_scripts_and_purge(debs):
    build, found = debs
    if run("dpkg", "-s", "mediaproxy-common", check=False).returncode == 0:
        pytest.fail("mediaproxy-common is already installed on this machine; the test would replace it", pytrace=False)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "install", "-y", "-q", *(str(found[name]) for name in PACKAGES), env=env, timeout=900)
    try:
        if shutil.which("systemd-analyze"):
            units = [f"/lib/systemd/system/mediaproxy-{name}.service" for name in ("dispatcher", "relay")]
            verified = run("systemd-analyze", "verify", *units, check=False)
            problems = [line for line in verified.stderr.splitlines() if "mediaproxy" in line]
            assert verified.returncode == 0 and not problems, verified.stderr
        run("mediaproxy-gen-certs", "/etc/mediaproxy/tls")
        relay_port, management_port = free_port(), free_port()
        configure(relay_port, management_port)
        service("dispatcher", "start")
        service("relay", "start")
        assert service("dispatcher", "status").returncode == 0 and service("relay", "status").returncode == 0
        wait_until(lambda: (summary(management_port) or [{}])[0].get("status") == "active", "the relay to connect", timeout=30)
        (relay,) = summary(management_port)
        assert relay["ip"] == "127.0.0.1" and relay["version"] == "5.0.0"
        # reload drains the relay: with no calls it leaves at once
        service("relay", "reload")
        wait_until(lambda: service("relay", "status", check=False).returncode != 0, "the drained relay to exit", timeout=30)
        wait_until(lambda: summary(management_port) == [], "the dispatcher to drop the relay", timeout=30)
        service("dispatcher", "stop")
        assert service("dispatcher", "status", check=False).returncode == 3
    finally:
        for name in ("relay", "dispatcher"):
            service(name, "stop", check=False)
        run("apt-get", "purge", "-y", "-q", *PACKAGES, env=env, timeout=300)
    for path in ("/etc/mediaproxy", "/usr/lib/python3/dist-packages/mediaproxy", "/var/spool/mediaproxy", "/usr/bin/media-relay"):
        assert not os.path.exists(path), f"{path} is left after purge"

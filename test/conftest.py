import os
import subprocess
import sys

import pytest

# the test helpers (harness.py) live beside the tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _host_network_state():
    with open("/proc/sys/net/ipv4/ip_forward") as file:
        forwarding = file.read().strip()
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout if os.path.exists("/usr/sbin/nft") else ""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return forwarding, tables, sorted(line.split()[0] for line in namespaces.splitlines() if line.startswith("mp-"))


@pytest.fixture(scope="session", autouse=True)
def code_under_test():
    """The second run of test/run must test the installed packages on Debian's python3, not the checkout."""
    import mediaproxy
    from harness import INSTALLED

    location = os.path.dirname(os.path.abspath(mediaproxy.__file__))
    if INSTALLED:
        assert location == "/usr/lib/python3/dist-packages/mediaproxy", location
        assert os.path.realpath(sys.executable).startswith("/usr/bin/python3"), sys.executable
    yield


@pytest.fixture(scope="session", autouse=True)
def host_network_untouched():
    """Tests may change only namespaces they create: the host's forwarding and rules stay as they were."""
    before = _host_network_state()
    yield
    assert _host_network_state() == before

"""Kernel forwarding host checks with a fake /proc/sys and a fake nft: what is fixed, what is explained."""

import subprocess

import pytest

from mediaproxy.relay.forwarding import host

MARK = 0x4D50


def fake_proc(tmp_path, **values):
    settings = {"net/netfilter/nf_conntrack_max": "262144", "net/ipv4/ip_forward": "0", "net/netfilter/nf_conntrack_acct": "0"}
    settings.update({key.replace("__", "/"): value for key, value in values.items()})
    for name, value in settings.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return str(tmp_path)


class FakeNft:
    def __init__(self, table=""):
        self.table = table
        self.loaded = []

    def __call__(self, command, input=None, **options):  # noqa: A002
        if command[1:3] == ["list", "table"]:
            return subprocess.CompletedProcess(command, 0 if self.table else 1, self.table, "")
        self.loaded.append(input)
        self.table = input
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.fixture(autouse=True)
def nft_present(monkeypatch):
    monkeypatch.setattr(host.shutil, "which", lambda name: f"/usr/sbin/{name}")


def test_fix_sets_sysctls_and_loads_the_table(tmp_path):
    proc = fake_proc(tmp_path)
    nft = FakeNft()
    changed = host.prepare(True, MARK, proc=proc, run=nft)
    assert changed == ["net.ipv4.ip_forward=1", "net.netfilter.nf_conntrack_acct=1", "nftables table ip mediaproxy_4d50"]
    assert (tmp_path / "net/ipv4/ip_forward").read_text() == "1\n"
    (loaded,) = nft.loaded
    assert "meta mark 0x00004d50 notrack" in loaded.replace("0x4d50", "0x00004d50") or "meta mark 0x4d50 notrack" in loaded
    assert "type nat hook prerouting" in loaded and "type nat hook postrouting" in loaded and "ct state new" in loaded


def test_nothing_to_do_when_everything_is_there(tmp_path):
    proc = fake_proc(tmp_path, net__ipv4__ip_forward="1", net__netfilter__nf_conntrack_acct="1")
    nft = FakeNft("table ip mediaproxy_4d50 {\n meta mark 0x00004d50 notrack\n type nat hook postrouting priority srcnat\n}")
    assert host.prepare(False, MARK, proc=proc, run=nft) == [] and nft.loaded == []


def test_without_fix_explains_what_is_missing(tmp_path):
    with pytest.raises(host.KernelSetupError, match=r"net.ipv4.ip_forward must be 1 \(sysctl -w net.ipv4.ip_forward=1"):
        host.prepare(False, MARK, proc=fake_proc(tmp_path), run=FakeNft())
    proc = fake_proc(tmp_path, net__ipv4__ip_forward="1", net__netfilter__nf_conntrack_acct="1")
    with pytest.raises(host.KernelSetupError, match="table ip mediaproxy_4d50 is missing or outdated; load it with nft -f"):
        host.prepare(False, MARK, proc=proc, run=FakeNft())


def test_no_conntrack_and_stream_timeout(tmp_path):
    with pytest.raises(host.KernelSetupError, match="no connection tracking"):
        host.prepare(True, MARK, proc=str(tmp_path), run=FakeNft())
    assert host.udp_stream_timeout(str(tmp_path)) == host.DEFAULT_UDP_STREAM_TIMEOUT
    fake_proc(tmp_path, net__netfilter__nf_conntrack_udp_timeout_stream="180")
    assert host.udp_stream_timeout(str(tmp_path)) == 180

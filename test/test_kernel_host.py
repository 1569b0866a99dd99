"""Kernel forwarding host checks with a fake /proc/sys and a fake nft: what is fixed, what is explained."""

import subprocess

import pytest

from mediaproxy.relay.plane import host

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
    def __init__(self, table="", others=()):
        self.table = table
        self.loaded = []
        self.deleted = []
        self.others = list(others)

    def __call__(self, command, input=None, **options):
        if command[1:3] == ["list", "table"]:
            return subprocess.CompletedProcess(command, 0 if self.table else 1, self.table, "")
        if command[1:3] == ["list", "tables"]:
            names = [f"table ip {name}" for name in (self.others + (["mediaproxy_4d50"] if self.table else []))]
            return subprocess.CompletedProcess(command, 0, "\n".join(names) + "\n", "")
        if command[1:3] == ["delete", "table"]:
            self.deleted.append(command[-1])
            self.table = ""
            return subprocess.CompletedProcess(command, 0, "", "")
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


def test_undo_restores_exactly_what_was_changed_also_after_a_crash(tmp_path):
    proc = fake_proc(tmp_path / "proc", net__netfilter__nf_conntrack_acct="1")
    record = str(tmp_path / "changes.json")
    nft = FakeNft()
    host.prepare(True, MARK, proc=proc, run=nft, changes=host.HostChanges(record))
    # the relay crashed: a new one finds ip_forward=1 (its predecessor's) and still knows it was 0
    restarted = host.HostChanges(record)
    assert "net.ipv4.ip_forward=1" not in host.prepare(True, MARK, proc=proc, run=nft, changes=restarted)
    assert restarted.sysctls == {"net/ipv4/ip_forward": "0"} and restarted.table == "mediaproxy_4d50"
    done = host.undo(restarted, proc=proc, run=nft)
    assert done == ["removed the nftables table ip mediaproxy_4d50", "net.ipv4.ip_forward=0 again"]
    assert (tmp_path / "proc/net/ipv4/ip_forward").read_text() == "0\n"
    assert (tmp_path / "proc/net/netfilter/nf_conntrack_acct").read_text() == "1\n"  # was 1 before: not ours
    assert not (tmp_path / "changes.json").exists()


def test_undo_leaves_sysctls_another_relay_needs_or_someone_changed(tmp_path):
    proc = fake_proc(tmp_path / "proc")
    changes = host.HostChanges(str(tmp_path / "changes.json"))
    nft = FakeNft(others=["mediaproxy_4d51"])
    host.prepare(True, MARK, proc=proc, run=nft, changes=changes)
    done = host.undo(changes, proc=proc, run=nft)
    assert nft.deleted == ["mediaproxy_4d50"]
    assert "left net.ipv4.ip_forward=1 for the relay table(s) mediaproxy_4d51" in done
    assert (tmp_path / "proc/net/ipv4/ip_forward").read_text() == "1\n"
    changes = host.HostChanges(str(tmp_path / "changes.json"))
    host.prepare(True, MARK, proc=fake_proc(tmp_path / "proc2"), run=FakeNft(), changes=changes)
    (tmp_path / "proc2/net/ipv4/ip_forward").write_text("0\n")  # the operator turned it off meanwhile
    host.undo(changes, proc=str(tmp_path / "proc2"), run=FakeNft())
    assert (tmp_path / "proc2/net/ipv4/ip_forward").read_text() == "0\n"


def test_nothing_changed_means_nothing_undone(tmp_path):
    nft = FakeNft()
    assert host.undo(host.HostChanges(None), run=nft) == [] and nft.deleted == []


GARBAGE_RECORDS = [
    b"",
    b"{",
    b"[1, 2]",
    b'{"sysctls": [1]}',
    b'{"sysctls": {"../../etc/passwd": "x"}, "table": 5}',
    b'{"sysctls": {"net/ipv4/ip_forward": "1; reboot"}, "table": "filter"}',
    b"\xff" * 64,
]


@pytest.mark.parametrize("garbage", GARBAGE_RECORDS)
def test_a_damaged_record_is_read_as_nothing_changed(tmp_path, garbage):
    (tmp_path / "changes.json").write_bytes(garbage)
    changes = host.HostChanges(str(tmp_path / "changes.json"))
    assert changes.sysctls == {}
    nft = FakeNft()
    host.undo(changes, proc=fake_proc(tmp_path / "proc"), run=nft)
    assert nft.deleted == [] and not (tmp_path / "changes.json").exists()
    assert (tmp_path / "proc/net/ipv4/ip_forward").read_text() == "0\n"

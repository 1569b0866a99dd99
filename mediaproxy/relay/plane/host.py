"""What the host must provide for kernel forwarding, checked (and set up when allowed) at relay start.

Conntrack NAT entries made over netlink only take effect when the network namespace runs both
conntrack's own hooks and the NAT hooks. Current kernels register them only when some rule
needs them, so the relay keeps a small nftables table of its own, ``mediaproxy_<mark>``:
a rule using conntrack state, and empty NAT chains. Without it, packets bypass the entries (no
conntrack hooks) or are counted but delivered to the relay's sockets untranslated (no NAT hooks).
The table also exempts what the relay itself sends (marked sockets) from conntrack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

PROC_SYS = "/proc/sys"
SETTINGS = ("net/ipv4/ip_forward", "net/netfilter/nf_conntrack_acct")
UDP_STREAM_TIMEOUT = "net/netfilter/nf_conntrack_udp_timeout_stream"
DEFAULT_UDP_STREAM_TIMEOUT = 120
NFT_RULESET = """\
table ip {table} {{
    chain userspace_untracked {{
        type filter hook output priority raw; policy accept;
        meta mark {mark:#x} notrack
    }}
    chain conntrack_hooks {{
        type filter hook prerouting priority filter; policy accept;
        ct state new counter
    }}
    chain nat_prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
    }}
    chain nat_postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
    }}
}}
"""


class KernelSetupError(Exception):
    """Kernel forwarding cannot work here; the message says what is missing and how to provide it."""


def _read(setting: str, proc: str) -> str | None:
    try:
        with open(f"{proc}/{setting}") as file:
            return file.read().strip()
    except OSError:
        return None


def _write(setting: str, value: str, proc: str) -> None:
    with open(f"{proc}/{setting}", "w") as file:
        file.write(f"{value}\n")


def udp_stream_timeout(proc: str = PROC_SYS) -> int:
    """How long the kernel keeps an idle UDP entry that saw both directions; also the userspace idle timeout."""
    value = _read(UDP_STREAM_TIMEOUT, proc)
    try:
        return int(value) if value is not None else DEFAULT_UDP_STREAM_TIMEOUT
    except ValueError:
        return DEFAULT_UDP_STREAM_TIMEOUT


def table_name(mark: int) -> str:
    """One table per relay mark, so relays sharing a network namespace do not replace each other's."""
    return f"mediaproxy_{mark:x}"


def ruleset(mark: int) -> str:
    return NFT_RULESET.format(table=table_name(mark), mark=mark)


class HostChanges:
    """What this relay changed on the host, so that stopping can undo exactly that.

    Kept in a file (in the runtime directory) as well: a relay that crashed left its changes in
    place, and the next start must still know the values from before, not take its own for them.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.sysctls: dict[str, str] = {}  # setting -> value before the relay changed it
        self.table: str | None = None
        if path is not None:
            try:
                with open(path) as file:
                    saved = json.load(file)
                self.sysctls = {key: value for key, value in saved.get("sysctls", {}).items() if key in SETTINGS and value in ("0", "1")}
                # only a table of ours is ever deleted, whatever the file says
                table = saved.get("table")
                self.table = table if isinstance(table, str) and re.fullmatch(r"mediaproxy_[0-9a-f]+", table) else None
            except (OSError, ValueError, AttributeError):
                pass

    def save(self) -> None:
        if self.path is None:
            return
        temporary = f"{self.path}.new"
        with open(temporary, "w") as file:
            json.dump({"sysctls": self.sysctls, "table": self.table}, file)
        os.replace(temporary, self.path)

    def forget(self) -> None:
        self.sysctls, self.table = {}, None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def prepare(fix: bool, mark: int, proc: str = PROC_SYS, run=subprocess.run, changes: HostChanges | None = None) -> list[str]:
    """Check the host for kernel forwarding, fixing what ``fix`` allows; returns what was changed.

    What was changed is also noted in ``changes`` (and its file) for :func:`undo`.
    """
    changes = changes if changes is not None else HostChanges()
    if _read("net/netfilter/nf_conntrack_max", proc) is None:
        raise KernelSetupError("the kernel has no connection tracking (modprobe nf_conntrack)")
    changed = [done for setting in SETTINGS if (done := _sysctl_on(setting, fix, proc, changes))]
    table = _table_loaded(fix, mark, run, changes)
    if table:
        changed.append(table)
    return changed


def _sysctl_on(setting: str, fix: bool, proc: str, changes: HostChanges) -> str | None:
    """``setting`` at 1, set so if ``fix`` (noted in ``changes``); what was changed, or None."""
    if _read(setting, proc) == "1":
        return None
    name = setting.replace("/", ".")
    if not fix:
        raise KernelSetupError(f"{name} must be 1 (sysctl -w {name}=1, or fix_kernel_settings = yes)")
    changes.sysctls.setdefault(setting, _read(setting, proc) or "0")
    changes.save()
    try:
        _write(setting, "1", proc)
    except OSError as error:
        raise KernelSetupError(f"cannot set {name}=1: {error.strerror}") from None
    return f"{name}=1"


def _table_loaded(fix: bool, mark: int, run, changes: HostChanges) -> str | None:  # run: subprocess.run
    """The relay's nftables table in place, loaded if ``fix``; what was changed, or None."""
    nft = shutil.which("nft")
    table = table_name(mark)
    wanted = ruleset(mark)
    if nft is None:
        raise KernelSetupError(f"nft is not installed (apt-get install nftables); the relay needs this table:\n{wanted}")
    listed = run([nft, "list", "table", "ip", table], capture_output=True, text=True)
    if listed.returncode == 0 and f"meta mark {mark:#010x} notrack" in listed.stdout and "type nat hook postrouting" in listed.stdout:
        return None
    if not fix:
        raise KernelSetupError(f"the nftables table ip {table} is missing or outdated; load it with nft -f:\n{wanted}")
    changes.table = table
    changes.save()
    # replaced as a whole, in one transaction, so an older version never lingers
    result = run([nft, "-f", "-"], input=f"table ip {table}\ndelete table ip {table}\n{wanted}", capture_output=True, text=True)
    if result.returncode != 0:
        raise KernelSetupError(f"cannot load the nftables table ip {table}: {result.stderr.strip()}")
    return f"nftables table ip {table}"


def undo(changes: HostChanges, proc: str = PROC_SYS, run=subprocess.run) -> list[str]:
    """Undo what ``prepare`` changed; returns what was done, one phrase each.

    A sysctl goes back to its old value only while it still has the value the relay gave it and
    no other relay's table is left in this network namespace (such a relay still needs it).
    """
    if not changes.sysctls and not changes.table:
        changes.forget()
        return []
    done = []
    nft = shutil.which("nft")
    if changes.table and nft is not None:
        result = run([nft, "delete", "table", "ip", changes.table], capture_output=True, text=True)
        if result.returncode == 0:
            done.append(f"removed the nftables table ip {changes.table}")
    others = []
    if nft is not None:
        listed = run([nft, "list", "tables", "ip"], capture_output=True, text=True)
        others = re.findall(r"^table ip (mediaproxy_\w+)$", listed.stdout, re.MULTILINE)
    for setting, original in changes.sysctls.items():
        said = _sysctl_back(setting, original, others, proc)
        if said:
            done.append(said)
    changes.forget()
    return done


def _sysctl_back(setting: str, original: str, others: list[str], proc: str) -> str | None:
    name = setting.replace("/", ".")
    if others:
        return f"left {name}=1 for the relay table(s) {', '.join(others)}"
    if _read(setting, proc) != "1":
        return None  # someone else changed it since; theirs to keep
    try:
        _write(setting, original, proc)
    except OSError as error:
        return f"could not set {name} back to {original}: {error.strerror}"
    return f"{name}={original} again"

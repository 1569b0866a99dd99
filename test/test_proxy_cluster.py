"""Two proxies, each with its own dispatcher, sharing two relays (real programs, loopback): a
dialog's in-dialog requests may take either proxy, and each dispatcher finds the other's calls."""

from __future__ import annotations

import shutil
import sqlite3

from deployment import Deployment, call, establish, exchange, udp_endpoint, wait_until

from mediaproxy.testing import remove, update

CALLS = 10


def _share_authority(owner: Deployment, other: Deployment) -> None:
    shutil.rmtree(other.config / "tls")
    shutil.copytree(owner.config / "tls", other.config / "tls")


def _relay_to_both(deployment: Deployment, first: Deployment, second: Deployment, **changes: str) -> None:
    changes["dispatchers"] = f"127.0.0.1:{first.relay_port}, 127.0.0.1:{second.relay_port}"
    path = deployment.config / "config.ini"
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        name = line.partition("=")[0].strip()
        if name in changes:
            lines[index] = f"{name} = {changes.pop(name)}"
    lines[lines.index("[Relay]") + 1 : lines.index("[Relay]") + 1] = [f"{name} = {value}" for name, value in changes.items()]
    path.write_text("\n".join(lines) + "\n")


def _call_ids(database) -> list[str]:
    try:
        return sorted(call_id for (call_id,) in sqlite3.connect(database).execute("SELECT call_id FROM media_sessions"))
    except sqlite3.OperationalError:
        return []


def test_in_dialog_requests_through_the_other_proxy_reach_the_calls_relay(tmp_path):
    database = tmp_path / "second.sqlite"
    first = Deployment(tmp_path / "first", "[Dispatcher]\nstatistics_pull_interval = 1\n", stream_timeout=60)
    second = Deployment(tmp_path / "second", f"[Dispatcher]\naccounting = database\n[Database]\ndburi = sqlite://{database}\n")
    other_relay = Deployment(tmp_path / "other-relay", stream_timeout=60)
    for deployment in (second, other_relay):
        _share_authority(first, deployment)
    _relay_to_both(first, first, second)
    # the dispatchers tell relays apart by the link's source address; its media ports are its own range
    _relay_to_both(other_relay, first, second, link_source_ip="127.0.0.2", port_range="45000:45998")
    try:
        second.start_dispatcher()
        first.start()
        other_relay.start_relay()
        for dispatcher in (first.dispatcher, second.dispatcher):
            dispatcher.wait_for_log("Relay 127.0.0.1 connected")
            dispatcher.wait_for_log("Relay 127.0.0.2 connected")
        through_first, through_second = first.proxy(), second.proxy()
        calls = []
        for number in range(CALLS):
            caller, callee = udp_endpoint(), udp_endpoint()
            # half the calls on each relay (the proxy names the relay it prefers)
            relay = f"127.0.0.{1 + number % 2}"
            caller_facing, callee_facing = call(through_first, f"cluster-{number}", caller, callee, media_relay=relay)
            calls.append((f"cluster-{number}", caller, callee, caller_facing, callee_facing))
        for call_id, caller, callee, caller_facing, callee_facing in calls:
            establish(caller, callee, caller_facing, callee_facing)
            # the callee's re-INVITE and the caller's answer take the other proxy: same relay, same ports
            callee_media = f"audio:127.0.0.1:{callee.getsockname()[1]}:sendrecv:ice=no"
            caller_media = f"audio:127.0.0.1:{caller.getsockname()[1]}:sendrecv:ice=no"
            reinvite = through_second.request(update(call_id, "tt", "ft", cseq=2, media=callee_media, dialog_id="7:8"))
            answer = through_second.request(update(call_id, "tt", "ft", kind="reply", cseq=2, media=caller_media, dialog_id="7:8"))
            assert reinvite.split()[1] == str(caller_facing) and answer.split()[1] == str(callee_facing), (reinvite, answer)
            exchange(caller, callee, caller_facing, callee_facing, 3)
        assert sorted(facing >= 45000 for *_, facing in calls) == [False] * (CALLS // 2) + [True] * (CALLS // 2)
        for call_id, *_ in calls:
            assert through_second.request(remove(call_id, "tt", "ft")) == "removed"
        wait_until(lambda: len(_call_ids(database)) == CALLS, "the second dispatcher's records", timeout=15)
        assert _call_ids(database) == sorted(call_id for call_id, *_ in calls)
        # the first dispatcher, which set the calls up, forgets them at its next pull of the relays' sessions
        wait_until(
            lambda: first.dispatcher.output().count("was removed through another dispatcher") == CALLS,
            "the first dispatcher to forget the calls",
            timeout=15,
        )
        assert "Took back" not in second.dispatcher.output()
    finally:
        for deployment in (other_relay, first, second):
            deployment.kill()

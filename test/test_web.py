"""The live sessions web page: what it shows (pure), its password file, the real dispatcher serving
it (plain, with passwords, over TLS with client certificates, and refusing garbage), and a real
headless Chromium showing a live call, with screenshots kept as artifacts."""

import base64
import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from deployment import Deployment, call, establish, exchange, udp_endpoint, wait_until

from harness import ROOT, Program, free_port
from mediaproxy.cli import sessions as sessions_cli
from mediaproxy.testing import update
from mediaproxy.web import overview, passwords
from mediaproxy.wire.statistics import SessionRecord, StreamRecord

ARTIFACTS = Path(os.environ.get("MEDIAPROXY_TEST_ARTIFACTS", Path(ROOT) / "test" / "artifacts"))


def record(call_id, start, **fields):
    stream = StreamRecord("audio", "active", caller_remote="198.51.100.7:4000", callee_remote="203.0.113.9:5000", path="kernel")
    return SessionRecord(call_id=call_id, from_tag="ft", start_time=start, streams=[stream], **fields)


def test_overview_lists_relays_and_the_newest_matching_calls():
    summaries = [
        {
            "ip": "192.0.2.1",
            "status": "active",
            "session_count": 2,
            "stream_count": {"audio": 2, "video": 1},
            "bps_relayed": 64000,
            "uptime": 90,
            "metrics": {"ports": {"used": 4, "free": 96}, "streams": {"kernel": 2}},
        },
        {"ip": "192.0.2.2", "status": "error"},  # did not answer: no numbers, and none made up
        {"ip": "192.0.2.3", "status": "active", "session_count": "many", "metrics": {"ports": []}},  # garbage from a peer
    ]
    records = [
        record("old", 100.0, from_uri="alice@example.com", to_uri="bob@example.com", relay="192.0.2.1"),
        record("new", 160.0, from_uri="carol@example.com", to_uri="dave@example.com", relay="192.0.2.1"),
        record("ringing", None, from_uri="erin@example.com"),
    ]
    shown = overview.overview(summaries, records, now=200.0)
    assert [relay["ip"] for relay in shown["relays"]] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    first = shown["relays"][0]
    assert (first["sessions"], first["streams"], first["ports_used"], first["ports_free"]) == (2, 3, 4, 96)
    assert first["paths"] == {"kernel": 2}
    assert shown["relays"][1]["sessions"] == 0 and shown["relays"][2]["sessions"] == 0 and shown["relays"][2]["ports_free"] == 0
    assert [session["call_id"] for session in shown["sessions"]] == ["new", "old", "ringing"]
    assert shown["sessions"][0]["duration"] == 40 and shown["sessions"][2]["answered"] is False
    assert shown["sessions"][0]["streams"][0]["path"] == "kernel"
    # a filter on any party, address or the relay, any case; a limit keeps the newest
    assert [s["call_id"] for s in overview.overview(summaries, records, 200.0, "CAROL")["sessions"]] == ["new"]
    assert [s["call_id"] for s in overview.overview(summaries, records, 200.0, "198.51.100.7")["sessions"]] == ["new", "old", "ringing"]
    limited = overview.overview(summaries, records, 200.0, limit=1)
    assert (limited["calls"], limited["matching"], [s["call_id"] for s in limited["sessions"]]) == (3, 3, ["new"])
    assert len(overview.overview(summaries, records, 200.0, limit=-5)["sessions"]) == 1


def test_password_file_lines_check_and_refuse_garbage(tmp_path):
    line = passwords.entry("alice", "s3cret")
    path = tmp_path / "web-passwords"
    path.write_text(f"# operators\n\n{line}\n")
    users = passwords.PasswordFile.load(str(path))
    assert users.check("alice", "s3cret")
    assert not users.check("alice", "s3cret ") and not users.check("bob", "s3cret")
    assert line != passwords.entry("alice", "s3cret")  # salted
    for garbage, named in (
        ("alice", "line 1"),
        ("alice:md5$1$x$y", "line 1"),
        ("alice:pbkdf2-sha256$99999999999$AAAA$AAAA", "line 1"),  # would hold the reactor for minutes
        ("alice:pbkdf2-sha256$١$AAAA$AAAA", "line 1"),
        (f"{line}\nbob:pbkdf2-sha256$1000$!!$AAAA", "line 2"),
        ("# nobody\n", "no users"),
    ):
        path.write_text(garbage)
        with pytest.raises(ValueError, match=named):
            passwords.PasswordFile.load(str(path))
    with pytest.raises(ValueError, match="cannot read"):
        passwords.PasswordFile.load(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no ':'"):
        passwords.entry("al:ice", "x")


def get(url, headers=None, context=None):
    """(status, headers, body) of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_page_and_its_data_during_a_call_and_garbage(tmp_path):
    port = free_port()
    programs = Deployment(tmp_path, f"[Dispatcher]\nweb_listen = {port}\n", stream_timeout=30).start()
    caller, callee = udp_endpoint(), udp_endpoint()
    try:
        programs.dispatcher.wait_for_log(f"Live sessions page at http://127.0.0.1:{port}/")  # a port alone: loopback
        base = f"http://127.0.0.1:{port}/"
        status, headers, page = get(base)
        assert status == 200 and b'<script src="sessions.js"' in page and headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
        for name, kind in (("sessions.js", "text/javascript"), ("sessions.css", "text/css")):
            status, headers, body = get(base + name)
            assert status == 200 and headers["Content-Type"].startswith(kind) and len(body) > 500
        proxy = programs.proxy()
        caller_facing, callee_facing = call(proxy, "web-data", caller, callee)
        establish(caller, callee, caller_facing, callee_facing)
        exchange(caller, callee, caller_facing, callee_facing, 10)

        def data(query=""):
            status, headers, body = get(base + "overview.json" + query)
            assert status == 200 and headers["Content-Type"] == "application/json"
            return json.loads(body)

        wait_until(lambda: data()["sessions"] and data()["sessions"][0]["streams"][0]["caller_packets"] >= 11, "the call's traffic")
        shown = data()
        (relay,) = shown["relays"]
        assert (relay["ip"], relay["status"], relay["sessions"], relay["streams"], relay["paths"]["userspace"]) == (
            "127.0.0.1",
            "active",
            1,
            1,
            1,
        )
        (session,) = shown["sessions"]
        assert (session["call_id"], session["from_uri"], session["to_uri"], session["relay"]) == (
            "web-data",
            "alice@example.com",
            "bob@example.com",
            "127.0.0.1",
        )
        (stream,) = session["streams"]
        assert stream["path"] == "userspace" and stream["caller"] == f"127.0.0.1:{caller.getsockname()[1]}"
        assert data("?q=nobody")["sessions"] == [] and data("?q=ALICE&limit=x")["matching"] == 1
        # garbage: unknown paths, a body past the bound, not HTTP at all; the page goes on
        assert get(base + "../../etc/passwd")[0] == 404 and get(base + "nothing")[0] == 404
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"POST /overview.json HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 200_000)
            client.settimeout(10)
            try:
                while client.recv(65536):
                    pass
            except ConnectionResetError:
                pass  # cut off: what we wanted
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"\x16\x03\x01garbage\r\n\r\n")
            client.settimeout(10)
            assert client.recv(100).startswith(b"HTTP/1.1 400")
        assert data()["calls"] == 1
    finally:
        programs.kill()


def test_a_password_file_guards_the_page(tmp_path):
    port = free_port()
    password_file = tmp_path / "web-passwords"
    password_file.write_text(passwords.entry("operator", "correct horse") + "\n")
    programs = Deployment(tmp_path, f"[Dispatcher]\nweb_listen = 127.0.0.1:{port}\nweb_password_file = {password_file}\n").start()
    try:
        base = f"http://127.0.0.1:{port}/"
        status, headers, _ = get(base)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
        assert get(base + "overview.json", basic("operator", "wrong"))[0] == 401
        programs.dispatcher.wait_for_log("Web page: wrong user or password from 127.0.0.1")
        assert get(base + "overview.json", basic("operator", "correct horse"))[0] == 200
        assert get(base, basic("operator", "correct horse"))[0] == 200
        # garbage credentials are a wrong password, not an error
        for header in ("Basic !!!not-base64", "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(), "Digest x", "Basic"):
            assert get(base, {"Authorization": header})[0] == 401, header
        for _ in range(9):  # one wrong above, and one of the garbage ones had a user name
            get(base, basic("mallory", "guess"))
        # too many wrong passwords from one address: refused without spending a PBKDF2 run on it
        assert get(base, basic("operator", "correct horse"))[0] == 200  # remembered: no check needed
        assert get(base, basic("mallory", "guess"))[0] == 429
        assert programs.dispatcher.output().count("Web page: wrong user or password") == 1  # once per peer per minute
    finally:
        programs.kill()


def test_the_page_off_loopback_needs_protection(tmp_path):
    port = free_port()
    for number, extra in enumerate(("", "web_password_file = web-passwords\n")):
        deployment = Deployment(tmp_path / str(number), f"[Dispatcher]\nweb_listen = any:{port}\n{extra}")
        (deployment.config / "web-passwords").write_text("operator:plain-text-password\n")
        dispatcher = Program(
            "media-dispatcher", str(deployment.config), str(deployment.runtime), str(tmp_path / f"dispatcher-{number}.log")
        )
        assert dispatcher.process.wait(timeout=15) == 1
        if not extra:
            assert "is reachable from other hosts: set web_use_tls or web_password_file" in dispatcher.output()
        else:  # a password file it cannot use is named with the line
            assert "web_password_file" in dispatcher.output() and "line 1: expected user:pbkdf2-sha256" in dispatcher.output()


def test_over_tls_only_management_client_certificates_get_in(tmp_path):
    port = free_port()
    programs = Deployment(tmp_path, f"[Dispatcher]\nweb_listen = 127.0.0.1:{port}\nweb_use_tls = yes\n").start()
    try:
        programs.dispatcher.wait_for_log(f"Live sessions page at https://127.0.0.1:{port}/")
        tls = programs.config / "tls"

        def context(certificate):
            built = ssl.create_default_context(cafile=str(tls / "ca.pem"))
            built.check_hostname = False
            if certificate is not None:
                built.load_cert_chain(str(tls / f"{certificate}.crt"), str(tls / f"{certificate}.key"))
            return built

        status, _, body = get(f"https://127.0.0.1:{port}/overview.json", context=context("client"))
        assert status == 200 and json.loads(body)["relays"][0]["ip"] == "127.0.0.1"
        for certificate in (None, "relay"):
            with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
                get(f"https://127.0.0.1:{port}/", context=context(certificate))
        wait_until(lambda: "has the relay role, not client" in programs.dispatcher.output(), "the wrong role logged")
        assert "management client 127.0.0.1 refused" in programs.dispatcher.output()
    finally:
        programs.kill()


def chromium(tmp_path, *arguments):
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: test/run installs it (Debian package chromium)")
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *arguments,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def text_of(html):
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_chromium_shows_the_live_call_its_parties_and_traffic(tmp_path):
    port = free_port()
    programs = Deployment(tmp_path, f"[Dispatcher]\nweb_listen = 127.0.0.1:{port}\n", stream_timeout=60).start()
    caller, callee = udp_endpoint(), udp_endpoint()
    stop = threading.Event()
    try:
        proxy = programs.proxy()
        hostile = "<img src=x onerror=document.title='owned'>@example.com"  # a From URI is whatever the caller wrote
        offer = proxy.request(
            update("browser-call", "ft", media=f"audio:127.0.0.1:{caller.getsockname()[1]}:sendrecv:ice=no", from_uri=hostile)
        )
        callee_facing = int(offer.split()[1])
        answer = proxy.request(
            update("browser-call", "ft", "tt", kind="reply", media=f"audio:127.0.0.1:{callee.getsockname()[1]}:sendrecv:ice=no")
        )
        caller_facing = int(answer.split()[1])
        establish(caller, callee, caller_facing, callee_facing)
        exchange(caller, callee, caller_facing, callee_facing, 50)

        def media():  # the call goes on while the browser watches; bounded in count
            for _ in range(500):
                if stop.wait(0.02):
                    return
                exchange(caller, callee, caller_facing, callee_facing, 1)

        talker = threading.Thread(target=media, daemon=True)
        talker.start()
        url = f"http://127.0.0.1:{port}/"
        # virtual time: the page's polls run (each one waits for its answer) within the budget
        dom = chromium(tmp_path, "--virtual-time-budget=7000", "--dump-dom", url)
        updates = int(re.search(r'<body data-updates="(\d+)"', dom).group(1))
        assert updates >= 2, "the page polled once and stopped"
        item = re.search(r'<li class="call" data-call-id="browser-call">(.*?)</ul>\s*</li>', dom, re.S)
        assert item is not None, dom[-3000:]
        shown = text_of(item.group(1))
        assert "<img src=x onerror=document.title='owned'>@example.com → bob@example.com" in shown.replace("&lt;", "<").replace("&gt;", ">")
        assert "<img" not in item.group(1) and "<title>MediaProxy sessions</title>" in dom  # text, never markup
        assert f"caller 127.0.0.1:{caller.getsockname()[1]}" in shown and "userspace" in shown and "relay 127.0.0.1" in shown
        sent = [int(count) for count in re.findall(r'class="traffic" data-packets="(\d+)"', item.group(1))]
        assert len(sent) == 2 and min(sent) >= 51, sent
        relay_row = re.search(r'<tr data-relay="127.0.0.1">(.*?)</tr>', dom, re.S)
        assert relay_row is not None and "active" in text_of(relay_row.group(1))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name, size in (("web-sessions-phone.png", "412,915"), ("web-sessions-desktop.png", "1280,800")):
            target = ARTIFACTS / name
            target.unlink(missing_ok=True)
            chromium(tmp_path, "--virtual-time-budget=3000", f"--window-size={size}", f"--screenshot={target}", url)
            assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 5000
    finally:
        stop.set()
        programs.kill()


def test_media_sessions_writes_password_file_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    out = io.StringIO()
    assert sessions_cli.main(["web-password", "operator"], out) == 0
    path = tmp_path / "web-passwords"
    path.write_text(out.getvalue())
    assert passwords.PasswordFile.load(str(path)).check("operator", "correct horse")
    for user, typed, complaint in (("operator", "\n", "an empty password"), ("oper:ator", "x\n", "no ':'")):
        monkeypatch.setattr("sys.stdin", io.StringIO(typed))
        assert sessions_cli.main(["web-password", user], io.StringIO()) == 1
        assert complaint in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sessions_cli.main(["web-password"], io.StringIO())

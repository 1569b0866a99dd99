"""The benchmarks under bench/ at tiny scale, so they keep working (their numbers are not checked here)."""

import shutil
import subprocess
import sys

import pytest
from netns import require_root_and_tools

from harness import ROOT


def bench(script, *arguments):
    require_root_and_tools()
    result = subprocess.run([sys.executable, f"{ROOT}/bench/{script}", *arguments], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_forwarding_benchmark_runs_all_three_relays():
    if shutil.which("rtpengine") is None:
        pytest.fail("rtpengine is missing: apt-get install rtpengine-daemon (.ci/run does this)", pytrace=False)
    output = bench("forwarding.py", "--streams", "5", "--seconds", "1")
    for system in ("userspace", "kernel", "rtpengine"):
        assert f"{system}: max streams with loss <= 0.1%: 5" in output, output


def test_setup_rate_benchmark_runs():
    output = bench("setup_rate.py", "--connections", "2", "--calls", "40")
    assert "40 calls over 2 connections" in output and ", 0 errors" in output


def test_memory_benchmark_runs():
    output = bench("memory.py", "--sessions", "5,10", "--settle", "0")
    rows = [line.split() for line in output.splitlines() if line.split() and line.split()[0] in ("5", "10")]
    assert [row[0] for row in rows] == ["5", "10"] and all(len(row) == 7 for row in rows)  # both ways, both programs


def test_fuzzer_runs_and_finds_nothing():
    output = bench("fuzz.py", "--inputs", "30000", "--seed", "7")
    assert "30000 inputs" in output and ", 0 exceptions outside the documented error types" in output


def test_packet_path_benchmark_runs():
    output = bench("packet_path.py", "--streams", "5", "--packets", "2000", "--rounds", "1")
    assert "this checkout" in output and "ns/packet" in output


def test_kept_state_benchmark_runs():
    output = bench("kept_state.py", "--calls", "50", "--sessions", "100", "--rounds", "1")
    assert "ratio kept / not kept" in output and "100 sessions: snapshot" in output


def test_accounting_queries_benchmark_runs_on_all_three_databases():
    output = bench("accounting_queries.py", "--rows", "500", "--runs", "1")
    assert "Example queries at 500 rows" in output and "| A user's calls in a month | " in output
    assert output.count(" rows) |") == 18 and "of 18 timings at or over 50 ms" in output  # six queries, three databases


def test_line_rate_benchmark_measures_every_path():
    if shutil.which("rtpengine") is None:
        pytest.fail("rtpengine is missing: apt-get install rtpengine-daemon (.ci/run does this)", pytrace=False)
    systems = "kernel,userspace,userspace-1,rtpengine,rtpengine-1"
    output = bench("line_rate.py", "--streams", "5", "--rates", "2000", "--seconds", "1", "--systems", systems, "--against", "HEAD")
    for system in ("kernel", "userspace", "rtpengine", "rtpengine-1", "HEAD"):
        assert f"{system}: max relayed at < 0.1% loss: " in output, output
    assert "(generator)" in output
    # at this scale the CPU readings may not resolve a cost, so the ratio may be stated as missing
    assert "CPU per relayed packet, userspace-1 / HEAD" in output, output


def test_line_rate_ratios_leave_out_costs_the_cpu_readings_do_not_resolve():
    def row(system, rate, cost, loss=0.0):
        return {"system": system, "rate": rate, "loss": loss, "relayed_pps": rate or 300000, "us_per_packet": cost}

    def compare(rows):
        code = f"import sys; sys.path.insert(0, {ROOT + '/bench'!r}); import line_rate; line_rate.compare({rows!r}, 'userspace-1', 'HEAD')"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # a tiny run's cost reads as zero or less: that rate is left out, not divided by
    output = compare([row("userspace-1", 2000, -10.0), row("HEAD", 2000, 0.0), row("userspace-1", 0, 6.0), row("HEAD", 0, 12.0)])
    assert "2000 pps" not in output
    assert "offered as fast as it can: CPU per relayed packet userspace-1 / HEAD: 0.50x" in output
    assert "CPU per relayed packet, userspace-1 / HEAD, median over the rates: 0.50x" in output
    output = compare([row("userspace-1", 2000, 5.0), row("HEAD", 2000, 0.0), row("userspace-1", 0, 6.0, loss=0.2), row("HEAD", 0, 12.0)])
    assert "CPU per relayed packet, userspace-1 / HEAD: no rate that both carried clean" in output


def test_setup_rate_benchmark_runs_side_by_side_with_another_revision():
    output = bench("setup_rate.py", "--connections", "2", "--calls", "20", "--against", "HEAD", "--rounds", "1")
    assert "this checkout / HEAD: set-ups/s " in output, output

"""`trackside bench`: option parsing, a short real run, its JSON against docs/bench.schema.json."""

import json
import os
import subprocess
import sys

import pytest

from trackside.cli import main

SCHEMA = os.path.join(os.path.dirname(__file__), "..", "docs", "bench.schema.json")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--writers", "0"], "--writers must be at least 1"),
        (["--keys", "0"], "--keys must be at least 1"),
        (["--seconds", "0"], "--seconds must be positive"),
        (["--records", "0"], "--records must be at least 1"),
        (["--rate", "-1"], "--rate must be 0"),
        (["--dest", "https://example.com"], "use store, none or a server URL"),
        (["--dest", "elsewhere"], "use store, none or a server URL"),
        (["--kinds", "float,audio"], "value kind 'audio' is not one of"),
    ],
)
def test_bench_rejects_bad_options(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bench_records_and_seconds_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--records", "10", "--seconds", "1"])


def test_bench_help_names_the_transports_and_destinations(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "{unix,grpc}" in out and "store|none|URL" in out and "--plot" in out and "--json" in out


def test_bench_refuses_an_unknown_transport(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--transport", "pigeon"])
    assert "invalid choice: 'pigeon'" in capsys.readouterr().err


def test_bench_over_grpc(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSIDE_")}
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "bench", "--records", "2000", "--json", "--transport", "grpc"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["options"]["transport"] == "grpc" and res["rows_stored"] == res["rows_expected"] == 2000


def test_bench_short_run_json_validates(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSIDE_")}
    png = tmp_path / "bench.png"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "trackside.cli",
            "bench",
            "--writers",
            "2",
            "--seconds",
            "2",
            "--json",
            "--plot",
            str(png),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    with open(SCHEMA) as f:
        jsonschema.validate(res, json.load(f))
    assert res["options"]["writers"] == 2 and res["options"]["seconds"] == 2
    assert res["records"] > 0 and res["rows_stored"] == res["rows_expected"]
    assert res["values"] == res["records"] * 10
    assert res["log_call_us"]["median_us"] > 0
    assert res["daemon"]["cpu_s"] > 0 and res["daemon"]["peak_rss_mb"] > 0
    assert res["lag_stored_ms"]["samples"] > 0
    assert png.stat().st_size > 1000
    assert not p.stderr.strip() or "\r" not in p.stderr  # no progress line when stderr is no terminal


def test_bench_text_report_with_rich_kinds(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSIDE_")}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "trackside.cli",
            "bench",
            "--records",
            "300",
            "--kinds",
            "histogram,table",
            "--keys",
            "3",
            "--durability",
            "none",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    for figure in (
        "records/s",
        "values/s",
        "log() cost",
        "lag to durable",
        "lag to stored",
        "finish()",
        "daemon CPU / peak RSS",
        "300 / 300",
    ):
        assert figure in p.stdout, p.stdout


@pytest.mark.parametrize("dest", ["none", "server"])
def test_bench_to_the_wal_only_and_to_a_server(dest, servers, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSIDE_")}
    target = "none" if dest == "none" else servers.start(tmp_path / "server").url
    p = subprocess.run(
        [sys.executable, "-m", "trackside.cli", "bench", "--records", "2000", "--json", "--dest", target],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    with open(SCHEMA) as f:
        jsonschema.validate(res, json.load(f))
    assert res["options"]["dest"] == target and res["records"] == 2000
    if dest == "none":
        assert res["rows_stored"] == 0  # offline: the WAL only
    else:
        assert res["rows_stored"] == 2000 and res["lag_stored_ms"]["samples"] > 0  # readable at the server

"""`mosaicod serve` as a user runs it: help, startup errors, and a plain (non-editable) install."""

import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mosaicod import allocator

ROOT = Path(__file__).resolve().parents[1]
MOSAICOD = [sys.executable, "-m", "mosaicod"]


def run(args, env=None, timeout=60):
    return subprocess.run(MOSAICOD + args, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_explains_configuration():
    out = run(["serve", "--help"]).stdout
    for needle in ("--data-dir", "--port", "--host", "MOSAICOD_DB_URL", "embedded PostgreSQL", "--config"):
        assert needle in out


@pytest.mark.parametrize("command", [
    ["serve"], ["cleanup"], ["store-optimizer"], ["ps"], ["rebuild-catalog"],
    # `api-key` itself only lists its actions; the configuration options are on each action
    ["api-key", "create"], ["api-key", "list"], ["api-key", "status"], ["api-key", "revoke"],
    ["api-key", "purge"],
])
def test_every_command_help_has_the_configuration_options(command):
    res = run(command + ["--help"])
    assert res.returncode == 0, res.stderr
    for needle in ("--config", "--data-dir", "--log-level", "--log-format"):
        assert needle in res.stdout, (command, needle)


def test_api_key_help_lists_its_actions():
    res = run(["api-key", "--help"])
    assert res.returncode == 0, res.stderr
    for action in ("create", "list", "status", "revoke", "purge"):
        assert action in res.stdout


def test_unreachable_postgres_is_a_one_line_error(tmp_path):
    port = free_port()  # nothing listens there
    res = run(["serve", "--data-dir", str(tmp_path)],
              env={"MOSAICOD_DB_URL": f"postgresql://127.0.0.1:{port}/x", "MOSAICOD_DB_PASSWORD": "hunter2"})
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("mosaicod: error:")]
    assert len(lines) == 1 and "cannot reach PostgreSQL" in lines[0]
    assert "Traceback" not in res.stderr and "hunter2" not in res.stderr


def test_unreachable_s3_is_a_one_line_error(tmp_path, pg_admin_url):
    port = free_port()
    res = run(["serve", "--data-dir", str(tmp_path)],
              env={"MOSAICOD_DB_URL": pg_admin_url, "MOSAICOD_STORE_ENDPOINT": f"http://127.0.0.1:{port}",
                   "MOSAICOD_STORE_BUCKET": "b", "MOSAICOD_STORE_ACCESS_KEY": "a",
                   "MOSAICOD_STORE_SECRET_KEY": "topsecret", "AWS_MAX_ATTEMPTS": "1"}, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "cannot reach the S3 store" in res.stderr and "Traceback" not in res.stderr
    assert "topsecret" not in res.stderr


def test_bad_settings_exit_2():
    res = run(["serve"], env={"MOSAICOD_PORT": "x"})
    assert res.returncode == 2
    assert res.stderr.strip() == "mosaicod: error: MOSAICOD_PORT: invalid value 'x': invalid literal for int() with base 10: 'x'"


def test_built_wheel_ships_the_migrations(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                          str(ROOT)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    wheel = next(tmp_path.glob("mosaicod-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mosaicod/migrations/env.py" in names
    assert any(n.startswith("mosaicod/migrations/versions/0001_") for n in names)
    for pkg in ("catalog", "store", "query", "maintenance", "commands"):
        assert f"mosaicod/{pkg}/__init__.py" in names


@pytest.mark.skipif(allocator._glibc() is None, reason="not a glibc platform")
def test_serve_tunes_malloc_unless_the_environment_does(tmp_path):
    port = free_port()  # nothing listens there: serve logs its settings, then fails to start
    env = {"MOSAICOD_DB_URL": f"postgresql://127.0.0.1:{port}/x"}
    res = run(["serve", "--data-dir", str(tmp_path), "--log-level", "debug", "--log-format", "json"], env=env)
    line = next(ln for ln in res.stderr.splitlines() if "malloc settings" in ln)
    assert '"MALLOC_ARENA_MAX": 2' in line and f'"MALLOC_MMAP_THRESHOLD_": {allocator.MMAP_THRESHOLD}' in line
    assert f'"MALLOC_TRIM_THRESHOLD_": {allocator.TRIM_THRESHOLD}' in line
    res = run(["serve", "--data-dir", str(tmp_path), "--log-level", "debug", "--log-format", "json"],
              env={**env, "MALLOC_ARENA_MAX": "4"})
    line = next(ln for ln in res.stderr.splitlines() if "malloc settings" in ln)
    assert "MALLOC_ARENA_MAX" not in line and f'"MALLOC_MMAP_THRESHOLD_": {allocator.MMAP_THRESHOLD}' in line


def test_embedded_postgres_start_prints_no_warnings(tmp_path):
    # containers and services have no XDG_RUNTIME_DIR: platformdirs' warning must not leak out
    res = run(["ps", "--data-dir", str(tmp_path)], timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr and "XDG_RUNTIME_DIR" not in res.stderr


@pytest.mark.parametrize("command", ["serve", "store-optimizer", "cleanup"])
def test_start_removes_merge_spill_folders_of_dead_processes_only(tmp_path, command):
    """The disorder-safe reader spills to TMPDIR/mosaicod-merge-<pid>-*; after a SIGKILL they stay.
    serve's start (and the maintenance loops', the optimizer reads through the same reader; each
    may run in its own container) removes those of dead processes, never a live process's (nor
    unknown folders)."""
    import os

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    stale = tmp / f"mosaicod-merge-{dead.pid}-abc123"
    live = tmp / f"mosaicod-merge-{os.getpid()}-def456"  # this test process: alive
    other = tmp / "mosaicod-merge-x1y2z3"  # no owner in its name: not ours to judge
    for d in (stale, live, other):
        d.mkdir()
        (d / "run.arrows").write_bytes(b"x" * 100)
    port = free_port()  # nothing listens there: serve cleans up, then fails to reach its catalog
    res = run([command, "--data-dir", str(tmp_path / "data")],
              env={"MOSAICOD_DB_URL": f"postgresql://127.0.0.1:{port}/x", "TMPDIR": str(tmp)})
    assert res.returncode == 1, res.stderr
    assert not stale.exists()
    assert live.exists() and (live / "run.arrows").exists() and other.exists()

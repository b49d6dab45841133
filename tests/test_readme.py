"""Every command README.md shows is exercised, or deliberately not run with the reason.

Each command of each fenced shell block of README.md must be one of:
* run by .ci/run, which reads it from README.md (`readme_commands.py command "<marker>"`) and runs
  it as written (quick start: plain install + serve, then the test suite);
* run by a test of this module, which also reads it from README.md (the Security block);
* listed in NOT_RUN with the reason (Docker: CI has no Docker daemon and no image registry).
A new README command with none of these decisions fails `test_every_readme_command_is_run_or_listed`.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import readme_commands as rc
from tests.ops_helpers import base_env, free_port, http_get

ROOT = rc.ROOT
CI_RUN = ROOT / ".ci" / "run"
DOCKER_REASON = ("needs a Docker daemon and the postgres/minio images: CI has neither (no image "
                 "registry is reachable); run by hand, see the Docker section")
NOT_RUN: dict[str, str] = {
    "cp .env.example .env && chmod 600 .env && $EDITOR .env": "interactive: the operator fills in the secrets",
    "docker compose up -d --build": DOCKER_REASON,
    "docker compose ps": DOCKER_REASON,
    'docker compose run --rm mosaicod api-key create --permissions read,write,delete -d admin': DOCKER_REASON,
    "curl -s http://127.0.0.1:9726/healthz": DOCKER_REASON + " (the compose stack's published /healthz)",
    "docker compose run --rm mosaicod ps": DOCKER_REASON,
    "docker build -t mosaicod:local .": DOCKER_REASON,
    "docker run -d --name mosaicod -p 127.0.0.1:6726:6726 -v mosaicod-data:/var/lib/mosaicod mosaicod:local":
        DOCKER_REASON,
}
SECURITY_MARKER = "## Security"


def ci_run_commands() -> dict[str, str]:
    """README commands that .ci/run extracts (by marker) and runs: {command: marker}."""
    markers = re.findall(r'readme command "([^"]+)"', CI_RUN.read_text())
    return {rc.command_after(m): m for m in markers}


def security_commands() -> list[str]:
    return [c for b in rc.blocks() if b.language in rc.SHELL_LANGUAGES and SECURITY_MARKER in b.preceding
            for c in rc.commands_of(b)]


def test_every_readme_command_is_run_or_listed():
    decided = set(ci_run_commands()) | set(security_commands()) | set(NOT_RUN)
    commands = rc.shell_commands()
    undecided = [c for c in commands if c not in decided]
    assert not undecided, ("README.md commands neither run in CI nor listed as not run (with the "
                           f"reason) in tests/test_readme.py NOT_RUN: {undecided}")
    stale = [c for c in NOT_RUN if c not in commands]
    assert not stale, f"NOT_RUN lists commands README.md no longer has: {stale}"
    assert all(reason.strip() for reason in NOT_RUN.values())


def test_ci_runs_both_quick_start_commands_as_written():
    ci = ci_run_commands()
    assert set(ci.values()) == {"Run the server", "Run the whole test suite"}, ci
    script = CI_RUN.read_text()
    # as written: each extracted command is handed to bash unchanged, the plain install first
    assert 'setsid bash -c "$SERVE_CMD"' in script and 'bash -c "$TEST_CMD"' in script
    assert script.index('bash -c "$SERVE_CMD"') < script.index('bash -c "$TEST_CMD"')
    serve, tests = (rc.command_after(m) for m in ("Run the server", "Run the whole test suite"))
    assert re.search(r"pip install \.( |$)", serve) and "[test]" not in serve, serve
    assert "[test]" in tests and "pytest" in tests, tests
    assert "python-snippet --port" in script  # and the README's Python example, on the run's port


def test_readme_commands_use_repository_relative_paths():
    for path in (ROOT / "README.md", ROOT / "bench" / "README.md"):
        where = path.relative_to(ROOT)
        for cmd in rc.shell_commands(path):
            for word in shlex.split(cmd):
                word = word.split("=", 1)[-1]
                assert not re.match(r"/(?!dev/null$)", word), f"{where}: absolute path in {cmd!r}"
                if re.fullmatch(r"[\w.-]+(/[\w.-]+)+\.(py|sh|toml|yml)", word):
                    assert (ROOT / word).exists(), f"{where}: {cmd!r} names {word}, which is missing"


def test_command_extraction_handles_comments_continuations_and_quotes(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("intro\n\n**Run A**\n\n```sh\nfoo --x 'a # b' \\\n  --y 1   # comment\n# whole line\n```\n"
                  "```python\nprint(1)\n```\n")
    assert rc.shell_commands(md) == ["foo --x 'a # b' --y 1"]
    assert rc.command_after("Run A", md) == "foo --x 'a # b' --y 1"
    with pytest.raises(ValueError):
        rc.command_after("Run B", md)


def test_python_example_runs_against_the_server(server, tmp_path):
    example = tmp_path / "example.py"
    example.write_text(rc.python_snippet(port=server.port))
    res = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("1 ") and "z=9.8" in res.stdout, res.stdout


def _argv(cmd: str) -> tuple[dict[str, str], list[str]]:
    """`VAR=value ... mosaicod args` -> (env, argv running this checkout's mosaicod)."""
    words = shlex.split(cmd)
    env = {}
    while words and re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words and words[0] == "mosaicod", f"unexpected command in the Security block: {cmd!r}"
    return env, [sys.executable, "-m", "mosaicod", *words[1:]]


def test_security_commands_as_written(tmp_path):
    """The Security block, command by command, as a reader pastes it (same data dir, embedded
    catalog): the server in the background with keys required, then a key created by the CLI;
    the printed key then opens the server to the client, and nothing else does."""
    from mosaicolabs import MosaicoClient

    os.chmod(tmp_path, 0o755)  # run as root, the embedded PostgreSQL runs as another user
    port, metrics_port = free_port(), free_port()
    env = base_env(MOSAICOD_DATA_DIR=str(tmp_path / "data"), MOSAICOD_PORT=str(port),
                   MOSAICOD_METRICS_PORT=str(metrics_port), PYTHONPATH=str(ROOT))
    commands = security_commands()
    assert any(c.endswith("&") for c in commands) and any("api-key create" in c for c in commands)
    background: list[subprocess.Popen] = []
    outputs: list[str] = []
    try:
        for cmd in commands:
            extra, argv = _argv(cmd.rstrip("&").strip())
            if cmd.endswith("&"):
                log = open(tmp_path / f"background-{len(background)}.log", "w")
                background.append(subprocess.Popen(argv, env={**env, **extra}, stdout=log,
                                                   stderr=subprocess.STDOUT))
                log.close()
                continue
            res = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True, timeout=180)
            assert res.returncode == 0, (cmd, res.stderr)
            outputs.append(res.stdout)
        key = outputs[-1].strip().splitlines()[-1]
        assert re.fullmatch(r"msco_[0-9a-z]{32}_[0-9a-f]{8}", key), outputs[-1]
        deadline = time.monotonic() + 120
        while True:
            assert background[0].poll() is None, (tmp_path / "background-0.log").read_text()
            try:
                if http_get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serve did not become healthy"
            time.sleep(0.2)
        with MosaicoClient.connect("127.0.0.1", port, api_key=key) as client:
            assert client.list_sequences() == []
        with pytest.raises(Exception):
            MosaicoClient.connect("127.0.0.1", port).close()
    finally:
        for proc in background:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc in background]
    assert codes == [0] * len(background)

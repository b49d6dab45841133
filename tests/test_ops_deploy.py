"""Deployment files: docker-compose.yml validated against the Compose Specification JSON schema
(tests/data/compose_spec.json, vendored from docker-compose 1.29.2, Apache-2.0) plus the
security rules of our issue; `docker-compose config` too when the binary is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
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

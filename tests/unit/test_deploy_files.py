"""docker-compose.yml runs the Procfile's processes, with Redis persisted and Flower behind auth."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.procfile import ROOT, procfile_commands

COMPOSE = ROOT / "docker-compose.yml"


def _services() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def _command(service: dict[str, object]) -> str:
    command = service["command"]
    text = command[-1] if isinstance(command, list) and command[0] == "sh" else " ".join(command)  # type: ignore[index]
    return (
        str(text)
        .replace("$$", "$")
        .replace("exec env REMAP_SIGTERM=SIGQUIT ", "REMAP_SIGTERM=SIGQUIT ")
        .removeprefix("exec ")
    )


def test_every_procfile_process_is_a_compose_service_with_the_same_command() -> None:
    services = _services()
    for name, command in procfile_commands().items():
        assert _command(services[name]) == command, name


def test_redis_keeps_its_data_and_reports_health() -> None:
    redis = _services()["redis"]
    assert "--appendonly yes" in str(redis["command"]) and "--appendfsync everysec" in str(redis["command"])
    assert "healthcheck" in redis and redis.get("volumes")
    for name in ("web", "worker", "consumer", "flower"):
        service = _services()[name]
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert service["restart"] == "unless-stopped"


def test_flower_cannot_run_without_basic_auth() -> None:
    flower = _services()["flower"]
    assert "FLOWER_BASIC_AUTH:?" in str(flower["environment"])  # type: ignore[index]
    assert "--basic-auth" in _command(flower)


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no docker compose client here",
)
def test_docker_compose_accepts_the_file() -> None:
    env = {**os.environ, "API_KEYS": "k", "SECRET_KEY": "s", "FLOWER_BASIC_AUTH": "a:b"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], env=env, capture_output=True
    )
    assert result.returncode == 0, result.stderr


def test_nginx_config_streams_unbuffered_and_logs_no_tokens() -> None:
    text = (Path(ROOT) / "deploy" / "nginx.conf").read_text()
    assert "proxy_buffering off" in text and "Upgrade" in text
    formats = [line for line in text.splitlines() if "log_format" in line or line.strip().startswith("'")]
    # $request (the request line) would carry ?token=; $uri is the path alone
    assert formats and not any(re.search(r"\$request\b(?!_)", line) for line in formats)

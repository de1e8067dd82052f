"""docker-compose.yml runs the Procfile's processes, with Redis persisted and Flower behind auth."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import runpy
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from app.pages import FLOWER_PORT_OFFSET
from tests.support.procfile import ROOT, procfile_commands

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


def test_nginx_lets_an_idle_connection_to_web_go_before_gunicorn_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEB_KEEPALIVE_S", raising=False)
    gunicorn_keepalive_s = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["keepalive"]
    nginx = re.search(r"^\s*keepalive_timeout (\d+)s;", (ROOT / "deploy" / "nginx.conf").read_text(), re.MULTILINE)
    assert nginx is not None
    assert int(nginx.group(1)) < gunicorn_keepalive_s


# -- PaaS: lock file, Python version, Heroku and Render -------------------------------------------


def _lock_script() -> Any:
    spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_satisfies_every_dependency_pyproject_declares() -> None:
    assert _lock_script().check() == []


def test_the_runtime_lock_holds_no_test_tool_and_the_dev_lock_builds_on_it() -> None:
    script = _lock_script()
    runtime = script.read_pins(ROOT / "requirements.txt")
    for dev_tool in ("pytest", "ruff", "mypy", "fakeredis", "playwright", "schemathesis", "matplotlib", "py-spy"):
        assert dev_tool not in runtime
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert script.read_pins(ROOT / "requirements-dev.txt").items() >= runtime.items()


def test_a_pin_outside_pyproject_s_range_is_reported() -> None:
    script = _lock_script()
    redis = next(r for r in script.declared() if r.name == "redis")
    problems = script.unsatisfied([redis], {"redis": "4.0.0"})
    assert problems == [f"redis==4.0.0 is outside {redis}"]
    assert script.unsatisfied([redis], {}) == [f"redis ({redis}) is not pinned"]


def test_the_tests_run_the_versions_a_deploy_installs() -> None:
    # make install installs requirements-dev.txt; a runtime version other than the lock's means it did not.
    script = _lock_script()
    runtime = {n: v for n, v in script.read_pins(ROOT / "requirements.txt").items() if n not in script.LOCAL}
    installed = {canonicalize_name(name): importlib.metadata.version(name) for name in runtime}
    assert {name: v for name, v in installed.items() if v != runtime[name]} == {}


def test_python_version_file_satisfies_requires_python() -> None:
    version = (ROOT / ".python-version").read_text().strip()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(f"{version}.0")
    assert f"Python {version} " in (ROOT / "requirements.txt").read_text()


def test_app_json_runs_every_procfile_process_with_redis_and_a_generated_secret() -> None:
    app = json.loads((ROOT / "app.json").read_text())
    assert set(app["formation"]) == set(procfile_commands())
    assert app["env"]["SECRET_KEY"]["generator"] == "secret"
    assert app["env"]["API_KEYS"]["required"] is True
    # Heroku's Redis is TLS with a self-signed certificate, and its add-on owns REDIS_URL.
    assert app["env"]["REDIS_SSL_CERT_REQS"]["value"] == "none"
    assert any(addon["plan"].startswith("heroku-redis:") for addon in app["addons"])


def test_render_blueprint_starts_each_procfile_line_on_its_key_value_store() -> None:
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    commands = procfile_commands()
    services = {s["name"].removeprefix("tokenbridge-"): s for s in blueprint["services"]}
    for name, command in commands.items():
        assert services[name]["startCommand"] == command, name
        assert services[name]["buildCommand"] == "pip install -r requirements.txt"
        redis_url = next(v for v in services[name]["envVars"] if v.get("key") == "REDIS_URL")
        assert redis_url["fromService"]["name"] == "tokenbridge-redis"
    assert services["web"]["healthCheckPath"] == "/healthz"
    assert services["redis"]["maxmemoryPolicy"] == "noeviction"


# -- Docker and compose ----------------------------------------------------------------------------


def test_dockerfile_installs_dependencies_before_the_source_and_runs_without_dev_tools_as_non_root() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    steps = [line for line in lines if line and not line.startswith("#")]
    install = steps.index("RUN pip install -r requirements.txt")
    assert steps[install - 1] == "COPY requirements.txt ./"
    first_source = min(i for i, step in enumerate(steps) if step.startswith("COPY bridge"))
    assert install < first_source, "a code change would reinstall every dependency"
    runtime = steps[max(i for i, step in enumerate(steps) if step.startswith("FROM ")) :]
    assert not any("[dev]" in step or "requirements" in step for step in runtime)
    assert any(step.startswith("COPY --from=build /venv") for step in runtime)
    user = next(step for step in runtime if step.startswith("USER "))
    assert user.split()[1] not in ("root", "0")
    healthcheck = " ".join(runtime[runtime.index(next(s for s in runtime if s.startswith("HEALTHCHECK"))) :][:2])
    assert "/healthz" in healthcheck
    assert "test-artifacts" in (ROOT / ".dockerignore").read_text()


def test_every_compose_service_has_a_healthcheck() -> None:
    for name, service in _services().items():
        assert "test" in service.get("healthcheck", {}), name  # type: ignore[operator]
    web = _services()["web"]["healthcheck"]
    assert "/healthz" in str(web["test"])  # type: ignore[index]


def test_flower_is_published_where_the_dashboards_link_points() -> None:
    # The dashboard links to FLOWER_URL, else this host on the web's PORT + 300.
    web, flower = _services()["web"], _services()["flower"]
    web_port = int(web["environment"]["PORT"])  # type: ignore[index]
    flower_port = int(flower["environment"]["PORT"])  # type: ignore[index]
    assert flower_port == web_port + FLOWER_PORT_OFFSET
    assert f":{flower_port}" in flower["ports"][0]  # type: ignore[index]
    assert flower["ports"][0].split(":")[-1] == str(flower_port)  # type: ignore[index]
    assert "8300" in (ROOT / ".env.example").read_text()


def test_env_example_names_every_variable_compose_requires() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert required and required <= set(example)


# -- Variables every PaaS manifest declares --------------------------------------------------------

# Optional variables a deploy commonly sets, and the processes that read each.
OPTIONAL_VARIABLES = {
    "CORS_ORIGINS": {"web"},
    "MODELS_FILE": {"web", "worker", "consumer"},
    "FLOWER_URL": {"web"},
}


def test_app_json_declares_each_optional_variable_with_a_description() -> None:
    env = json.loads((ROOT / "app.json").read_text())["env"]
    for name in OPTIONAL_VARIABLES:
        assert env[name]["required"] is False, name
        assert env[name]["description"], name


def test_render_blueprint_asks_for_each_optional_variable_on_the_services_that_read_it() -> None:
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    services = {s["name"].removeprefix("tokenbridge-"): s for s in blueprint["services"]}
    for name, readers in OPTIONAL_VARIABLES.items():
        for service in readers:
            entry = next((v for v in services[service]["envVars"] if v.get("key") == name), None)
            assert entry == {"key": name, "sync": False}, (service, name)


def test_paas_manifests_protect_the_ops_endpoints_and_count_their_routers_hops() -> None:
    # Heroku's and Render's routers each append one X-Forwarded-For entry (a second hop is counted only once seen).
    env = json.loads((ROOT / "app.json").read_text())["env"]
    assert env["OPS_TOKEN"]["generator"] == "secret"
    assert env["TRUSTED_PROXIES"]["value"] == "1"
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    web = next(s for s in blueprint["services"] if s["name"] == "tokenbridge-web")
    web_env = {v["key"]: v for v in web["envVars"] if "key" in v}
    assert web_env["OPS_TOKEN"] == {"key": "OPS_TOKEN", "generateValue": True}
    assert web_env["TRUSTED_PROXIES"] == {"key": "TRUSTED_PROXIES", "value": "1"}

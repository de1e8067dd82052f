"""`tokenbridge --version`, `cancel`, `models`, help on every flag, and what `tokenbridge dev` refuses."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from bridge.connections import redis_client
from bridge.settings import Settings
from tests.support.scripted_server import ScriptedServer, run_cli, status
from tokenbridge import cli, devserver

pytestmark = pytest.mark.usefixtures("no_ambient_config")

Serve = Callable[..., ScriptedServer]
MODELS = {
    "object": "list",
    "data": [
        {"id": "echo", "object": "model", "owned_by": "tokenbridge"},
        {"id": "gpt-4o-mini", "object": "model", "owned_by": "openai"},
    ],
}


def test_version_prints_the_version_of_pyproject(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert capsys.readouterr().out == f"tokenbridge {project['version']}\n"


def test_every_flag_and_argument_of_every_command_has_help() -> None:
    parser = cli._parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {"tokenbridge": parser, **subparsers.choices}
    missing = [
        f"{name} {action.dest}"
        for name, each in parsers.items()
        for action in each._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []
    assert {"cancel", "models"} <= set(subparsers.choices)


def test_cancel_posts_to_the_generation_and_says_so(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(status(202, {"id": "gen_1", "status": "cancelled"}))

    code, out, _ = run_cli(capsys, "--url", server.url, "--api-key", "k", "cancel", "gen_1")

    assert code == 0
    assert "cancelling gen_1" in out
    assert (server.requests[0].method, server.requests[0].path) == ("POST", "/v1/generations/gen_1/cancel")


def test_cancelling_a_finished_generation_exits_1_with_the_servers_reason(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(status(409, {"error": {"code": "already_finished", "message": "It has finished."}}))

    code, _, err = run_cli(capsys, "--url", server.url, "--api-key", "k", "cancel", "gen_1")

    assert code == 1
    assert "already_finished" in err


def test_models_lists_ids_and_owners_or_the_json_body(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(status(200, MODELS), status(200, MODELS))

    code, out, _ = run_cli(capsys, "--url", server.url, "--api-key", "k", "models")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [["echo", "tokenbridge"], ["gpt-4o-mini", "openai"]]

    code, out, _ = run_cli(capsys, "--url", server.url, "--api-key", "k", "models", "--json")
    assert orjson.loads(out) == MODELS
    assert [r.path for r in server.requests] == ["/v1/models", "/v1/models"]


# -- tokenbridge dev -------------------------------------------------------------------------------


@pytest.fixture
def occupied() -> Iterator[int]:
    """A port something listens on, as another server would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_dev_refuses_a_taken_port_before_starting_or_announcing_anything(
    occupied: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[object] = []
    monkeypatch.setattr(devserver.subprocess, "Popen", lambda *a, **k: started.append(a))
    monkeypatch.setattr(devserver, "EmbeddedRedis", lambda *a, **k: started.append(a))

    code, out, err = run_cli(capsys, "dev", "--port", str(occupied))

    assert code == 1 and started == []
    assert out == ""
    # (the Flower port next to it may be taken too, by whatever else runs on this machine: then both are named)
    assert f"{occupied} (web)" in err and "already in use on 127.0.0.1" in err
    assert "tokenbridge is running" not in out + err
    assert not (tmp_path / ".tokenbridge").exists()


def test_dev_refuses_when_the_flower_port_is_taken(
    occupied: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devserver, "EmbeddedRedis", lambda *a, **k: pytest.fail("started Redis"))
    code, _, err = run_cli(capsys, "dev", "--port", str(occupied - devserver.FLOWER_PORT_OFFSET))
    assert code == 1
    assert f"{occupied} (Flower) already in use" in err


def test_dev_binds_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("web: gunicorn --bind 0.0.0.0:$PORT app\nflower: celery flower --address=0.0.0.0\n")

    moved = devserver._procfile_on(str(procfile), "127.0.0.1", tmp_path / "state")
    assert Path(moved).read_text().count("127.0.0.1") == 2 and "0.0.0.0" not in Path(moved).read_text()
    assert devserver._procfile_on(str(procfile), "0.0.0.0", tmp_path / "state") == str(procfile)

    assert cli._parser().parse_args(["dev"]).host == "127.0.0.1"
    monkeypatch.setenv("TOKENBRIDGE_DEV_HOST", "0.0.0.0")
    assert cli._parser().parse_args(["dev"]).host == "0.0.0.0"
    assert cli._parser().parse_args(["dev", "--host", "::1"]).host == "::1"


# -- REDIS_MAX_CONNECTIONS and managed Redis over TLS ----------------------------------------------


def test_redis_max_connections_sizes_every_processs_pool() -> None:
    assert (
        redis_client(Settings(redis_url="redis://h:1/0").redis, max_connections=256).connection_pool.max_connections
        == 256
    )
    limited = Settings(redis_url="redis://h:1/0", redis_max_connections=6)
    for default in (64, 256):
        assert redis_client(limited.redis, max_connections=default).connection_pool.max_connections == 6
    assert limited.redis.rate_limit_storage == ("redis://h:1/0", {"max_connections": 6})
    with pytest.raises(ValueError):
        Settings(redis_max_connections=1)


def test_the_webs_rate_limiter_shares_its_bounded_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services import Services

    services = Services.build(
        Settings(redis_url="redis://127.0.0.1:1/0", redis_max_connections=5, celery_broker_url="memory://")
    )
    assert services.rate_limit_storage_options == {"connection_pool": services.redis.connection_pool}
    assert services.redis.connection_pool.max_connections == 5


def test_a_managed_redis_self_signed_certificate_is_accepted_by_url_or_setting() -> None:
    url = "rediss://:pw@h:6380/0"
    settings = Settings(redis_url=url, redis_ssl_cert_reqs="none")
    assert settings.resolved_redis_url == settings.broker_url == f"{url}?ssl_cert_reqs=none"
    assert Settings(redis_url=f"{url}?ssl_cert_reqs=required", redis_ssl_cert_reqs="none").resolved_redis_url.endswith(
        "?ssl_cert_reqs=required"
    )
    assert Settings(redis_url="redis://h:1/0", redis_ssl_cert_reqs="none").resolved_redis_url == "redis://h:1/0"
    pool = redis_client(Settings(redis_url=f"{url}?ssl_cert_reqs=none").redis).connection_pool
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    cluster = Settings(redis_url=f"{url}?ssl_cert_reqs=none", redis_cluster=True, celery_broker_url="amqp://b//")
    assert cluster.redis.rate_limit_storage == ("redis+cluster://:pw@h:6380", {"ssl": True, "ssl_cert_reqs": "none"})


# -- documentation and `python -m tokenbridge` -----------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_every_command_is_documented_in_clients_md() -> None:
    subparsers = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    doc = (ROOT / "docs" / "clients.md").read_text(encoding="utf-8")
    assert [name for name in subparsers.choices if f"tokenbridge {name}" not in doc] == []


def _without_the_project(directory: Path) -> Path:
    """A copy of this environment's site-packages (links) without tokenbridge's installation: what a PaaS has
    after ``pip install -r requirements.txt``."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    for entry in site_packages.iterdir():
        if not entry.name.lower().startswith(("tokenbridge", "__editable__")) and entry.suffix != ".pth":
            (directory / entry.name).symlink_to(entry)
    # requirements.txt installs the Python client from its folder (./clients/python).
    (directory / "tokenbridge_client").symlink_to(ROOT / "clients" / "python" / "src" / "tokenbridge_client")
    return directory


def test_python_m_tokenbridge_runs_from_the_repository_root_without_the_project_installed(
    serve: Serve, tmp_path: Path
) -> None:
    # Given the dependencies of requirements.txt but not the project, and no `tokenbridge` on PATH
    env = {"PYTHONPATH": str(_without_the_project(tmp_path)), "PATH": os.defpath, "NO_COLOR": "1"}
    server = serve(status(200, MODELS))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # -S: no site-packages of its own, so what is imported comes from the copy above or the checkout.
        command = [sys.executable, "-S", "-m", "tokenbridge", *args]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    where = subprocess.run(
        [sys.executable, "-S", "-c", "import tokenbridge; print(tokenbridge.__file__)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert where.stdout.strip() == str(ROOT / "tokenbridge" / "__init__.py"), where.stderr

    # When the commands run as `python -m tokenbridge` from the repository's root
    help_ = run("--help")
    models = run("--url", server.url, "--api-key", "k", "models")
    # Then they work as the console script does, with the checkout's code
    assert help_.returncode == 0, help_.stderr
    assert "dead-letters" in help_.stdout and help_.stdout.startswith("usage: tokenbridge ")
    assert models.returncode == 0, models.stderr
    assert models.stdout.split() == ["echo", "tokenbridge", "gpt-4o-mini", "openai"]

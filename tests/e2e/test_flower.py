"""Flower, started from the Procfile with basic auth, shows the whole pipeline: Celery workers and consumers.

The consumer workers send Celery events (CONSUMER_CELERY_EVENTS, on by default) and answer the inspect commands
Flower broadcasts; this test reads what Flower made of them through its own HTTP API, as an operator's tooling
would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.embedded import free_port
from tests.support import AMQP_URL, quietly, rabbitmq_listens, wait_for
from tests.support.procfile import ROOT
from tests.support.stack import Stack, build_stack
from workers.celery_events import PROCESS_TASK

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AUTH = ("ops", "fl0wer-s3cret")
GENERATE_TASK = "tokenbridge.generate"


class Flower:
    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.base_url}{path}", params=params, auth=AUTH, timeout=10)
        response.raise_for_status()
        return response.json()

    def workers_alive(self) -> dict[str, bool]:
        """Every worker Flower knows from its events, and whether its heartbeats still come."""
        workers: dict[str, bool] = self.get("/api/workers", status="true")
        return workers

    def workers(self, **params: Any) -> dict[str, dict[str, Any]]:
        """What Flower's inspect calls got from each worker (``refresh`` asks them again first)."""
        workers: dict[str, dict[str, Any]] = self.get("/api/workers", **params)
        return workers

    def post(self, path: str) -> httpx.Response:
        return httpx.post(f"{self.base_url}{path}", auth=AUTH, timeout=10)

    def tasks(self) -> dict[str, dict[str, Any]]:
        tasks: dict[str, dict[str, Any]] = self.get("/api/tasks", limit=1000)
        return tasks

    def consumer_tasks(self, generation_id: str) -> dict[str, dict[str, Any]]:
        """The tasks that stand for one generation on the consumers: one per owner."""
        return {
            uuid: task
            for uuid, task in self.tasks().items()
            if task.get("name") == PROCESS_TASK and task.get("args") == repr([generation_id])
        }


def _poll(condition: Callable[[], object], *, timeout_s: float, what: str) -> None:
    # An HTTP error is Flower still starting.
    wait_for(
        quietly(condition, httpx.HTTPError),
        timeout_s=timeout_s,
        interval_s=0.25,
        message=f"{what}: not within {timeout_s}s",
    )


@pytest.fixture(params=["redis", "rabbitmq"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, Flower]]:
    """The stack with Flower, its Celery broker the streams' Redis or RabbitMQ (skipped where none listens)."""
    broker: dict[str, str] = {}
    if request.param == "rabbitmq":
        if not rabbitmq_listens():
            pytest.skip("no RabbitMQ on 127.0.0.1:5672")
        broker["CELERY_BROKER_URL"] = AMQP_URL
    flower_port = free_port()
    stack = build_stack(
        tmp_path,
        ROOT / "test-artifacts" / f"flower-logs-{request.param}",
        FLOWER_BASIC_AUTH=":".join(AUTH),
        FLOWER_URL=f"http://127.0.0.1:{flower_port}/",
        **broker,
    )
    try:
        # Flower first, so that it sees every worker come online
        stack.start("flower", PORT=str(flower_port))
        flower = Flower(flower_port)
        _poll(lambda: flower.get("/api/workers", status="true") is not None, timeout_s=20, what="Flower up")
        stack.start("web")
        stack.start("worker")
        stack.start("consumer-a", "consumer", CONSUMER_NAME="e2e-a")
        stack.start("consumer-b", "consumer", CONSUMER_NAME="e2e-b")
        stack.wait_ready(consumers=2)
        yield stack, flower
    finally:
        stack.stop_all()
        stack.stop_servers()


def _finish(stack: Stack, generation: dict[str, Any]) -> str:
    return stack.events(generation).events[-1].event


def test_flower_shows_consumers_and_their_generations_and_a_killed_consumer_goes_offline(
    stack: tuple[Stack, Flower],
) -> None:
    stack_, flower = stack
    # Given the Celery worker and both consumers online in Flower
    _poll(
        lambda: {"consumer@e2e-a", "consumer@e2e-b"} <= {w for w, alive in flower.workers_alive().items() if alive},
        timeout_s=15,
        what="consumers online in Flower",
    )
    assert any(w.startswith("worker-") and alive for w, alive in flower.workers_alive().items())
    # And, once Flower has inspected the workers again, in its plain worker list beside the Celery worker
    flower.workers(refresh="true")
    _poll(
        lambda: {"consumer@e2e-a", "consumer@e2e-b"} <= set(flower.workers()),
        timeout_s=10,
        what="consumers in GET /api/workers",
    )
    listed = flower.workers()
    assert any(w.startswith("worker-") for w in listed)
    for name in ("consumer@e2e-a", "consumer@e2e-b"):
        assert listed[name]["registered"] == [PROCESS_TASK] and listed[name]["active_queues"] == []
        assert listed[name]["stats"]["pool"]["processes"] == [listed[name]["stats"]["pid"]]

    # And the Celery worker sending its task events, which it does once Flower has asked (every 5 s) and not before
    def generate_task_listed() -> bool:
        probe = stack_.create(model="echo", prompt="probe")
        _finish(stack_, probe)
        time.sleep(0.5)  # pacing: the probe's task events reach Flower before it is asked, then a new probe
        tasks = flower.tasks().values()
        return any(t.get("name") == GENERATE_TASK and t.get("args") == repr([probe["id"]]) for t in tasks)

    _poll(generate_task_listed, timeout_s=20, what="the worker's task events in Flower")

    # When generations end in done, error and cancelled
    done = stack_.create(model="echo", prompt="seen in flower")
    failed = stack_.create(model="synthetic", prompt="x", max_tokens=5, options={"fail_after_tokens": 2})
    cancelled = stack_.create(model="echo", prompt=" ".join(["slow"] * 100), options={"delay_ms": 100})
    stack_.events(cancelled, max_events=1)
    assert stack_.post(f"/v1/generations/{cancelled['id']}/cancel").status_code == 202
    assert [_finish(stack_, g) for g in (done, failed, cancelled)] == ["done", "error", "cancelled"]

    # Then each is a task of the consumer that processed it, in the state its end says
    def ended(generation: dict[str, Any], state: str) -> dict[str, Any] | None:
        tasks = list(flower.consumer_tasks(generation["id"]).values())
        return tasks[0] if len(tasks) == 1 and tasks[0]["state"] == state else None

    _poll(lambda: ended(done, "SUCCESS"), timeout_s=10, what="done generation SUCCESS in Flower")
    _poll(lambda: ended(failed, "FAILURE"), timeout_s=10, what="failed generation FAILURE in Flower")
    _poll(lambda: ended(cancelled, "REVOKED"), timeout_s=10, what="cancelled generation REVOKED in Flower")
    failure = ended(failed, "FAILURE")
    assert failure is not None and "provider_error" in failure["exception"]
    assert {t["worker"] for g in (done, failed, cancelled) for t in flower.consumer_tasks(g["id"]).values()} <= {
        "consumer@e2e-a",
        "consumer@e2e-b",
    }
    # And the Celery worker's generate tasks are listed beside them
    generate_tasks = [t for t in flower.tasks().values() if t.get("name") == GENERATE_TASK]
    assert len(generate_tasks) >= 3 and all(t["worker"].startswith("worker-") for t in generate_tasks)

    # Given a long generation, running on one of the consumers
    long = stack_.create(model="echo", prompt=" ".join(["long"] * 70), options={"delay_ms": 100})
    _poll(
        lambda: any(t["state"] == "STARTED" for t in flower.consumer_tasks(long["id"]).values()),
        timeout_s=10,
        what="long generation STARTED in Flower",
    )
    ((owner_uuid, owner_task),) = flower.consumer_tasks(long["id"]).items()
    owner = owner_task["worker"]
    # And its consumer's page in Flower lists it as an active task
    detail = flower.workers(workername=owner, refresh="true")[owner]
    assert [(t["id"], t["args"]) for t in detail["active"]] == [(owner_uuid, repr([long["id"]]))]
    assert detail["stats"]["total"] == {PROCESS_TASK: detail["stats"]["total"][PROCESS_TASK]}
    worker_page = httpx.get(f"{flower.base_url}/worker/{owner}", auth=AUTH, timeout=10)
    assert worker_page.status_code == 200 and owner_uuid in worker_page.text
    victim, survivor = (
        ("consumer-a", "consumer@e2e-b") if owner == "consumer@e2e-a" else ("consumer-b", "consumer@e2e-a")
    )
    # When its consumer is killed with SIGKILL (no worker-offline, no hand-back)
    stack_.kill(victim)
    killed_at = time.monotonic()
    # Then Flower shows it offline once its heartbeats stop, the other one still online
    _poll(lambda: flower.workers_alive()[owner] is False, timeout_s=20, what="killed consumer offline in Flower")
    offline_after_s = time.monotonic() - killed_at
    assert flower.workers_alive()[survivor] is True
    # And the generation, taken over, ends as a new task on the survivor
    assert _finish(stack_, long) == "done"

    def taken_over() -> dict[str, Any] | None:
        tasks = [t for t in flower.consumer_tasks(long["id"]).values() if t["worker"] == survivor]
        return tasks[0] if tasks and tasks[0]["state"] == "SUCCESS" else None

    _poll(taken_over, timeout_s=10, what="taken-over generation SUCCESS on the survivor")
    task = taken_over()
    assert task is not None and "'taken_over': True" in task["kwargs"]
    assert offline_after_s < 20

    # And the dashboard's Flower link lands on Flower's workers page, which lists the consumers
    dashboard = httpx.get(stack_.url("/dashboard"), timeout=10).text
    match = re.search(r'id="flower" href="([^"]+)"', dashboard)
    assert match is not None
    page = httpx.get(match.group(1), auth=AUTH, timeout=10)
    assert page.status_code == 200 and survivor in page.text and owner in page.text

    # When an operator presses Shut Down and Restart Pool on a consumer's page
    assert flower.post(f"/api/worker/shutdown/{survivor}").status_code == 200
    restart = flower.post(f"/api/worker/pool/restart/{survivor}")
    # Then the consumer says it does not do that, and goes on: it still answers, its process still runs
    assert restart.status_code == 403 and "not supported by a tokenbridge consumer" in restart.text
    assert flower.workers(workername=survivor, refresh="true")[survivor]["stats"]["pid"] > 0
    survivor_process = "consumer-a" if survivor == "consumer@e2e-a" else "consumer-b"
    assert stack_.processes[survivor_process].poll() is None

"""POST → first token at an SSE client, for ``echo`` with no delay: ``python -m bench.ttft URL API_KEY [N]``."""

from __future__ import annotations

import statistics
import sys
import time

import httpx

from tests.support.sse import iter_messages

# Runs not counted: the first requests of fresh processes (their first Celery task, first commit, first hub read).
_WARM_UP = 10


def measure(base_url: str, api_key: str, runs: int = 20) -> list[float]:
    headers = {"Authorization": f"Bearer {api_key}"}
    samples: list[float] = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        for _ in range(runs + _WARM_UP):
            started = time.perf_counter()
            created = client.post("/v1/generations", json={"model": "echo", "prompt": "first token please"}).json()
            with client.stream("GET", created["events_url"]) as response:
                for message in iter_messages(response.iter_bytes()):
                    if message.event == "token":
                        samples.append((time.perf_counter() - started) * 1000)
                        break
    return samples[_WARM_UP:]


def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    samples = measure(base_url, api_key, runs)
    ordered = sorted(samples)
    print(
        f"POST -> first token (echo, n={len(samples)}): median {statistics.median(samples):.1f} ms, "
        f"min {ordered[0]:.1f} ms, p90 {ordered[int(0.9 * (len(ordered) - 1))]:.1f} ms, max {ordered[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()

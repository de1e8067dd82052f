"""Publishes synthetic tokens for the Flask-SSE baseline: N channels x R tokens/s x T tokens, then done.

Messages have Flask-SSE's own format; each carries seq and the producer's timestamp, like tokenbridge's.
"""

from __future__ import annotations

import json
import sys
import time

import redis


def main() -> None:
    url, channels, rate, tokens = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    client = redis.Redis.from_url(url)
    interval = 1.0 / rate
    start = time.monotonic()
    for seq in range(tokens + 1):
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pipe = client.pipeline(transaction=False)
        for channel in range(channels):
            if seq < tokens:
                message = {"data": {"seq": seq, "content": "token ", "ts": time.time()}, "type": "token"}
            else:
                message = {"data": {"seq": seq, "finish_reason": "length"}, "type": "done"}
            pipe.publish(f"gen-{channel}", json.dumps(message))
        pipe.execute()


if __name__ == "__main__":
    main()

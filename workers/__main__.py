"""``python -m workers``: one consumer worker, until SIGTERM."""

from __future__ import annotations

import logging

from celery import Celery
from prometheus_client import start_http_server

from bridge.connections import redis_client
from bridge.constants import celery_client_options, send_generation
from bridge.logs import configure_logging
from bridge.settings import Settings
from workers.consumer import ConsumerWorker
from workers.processors import default_processors


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, process="consumer")
    # The socket timeout must outlast the longest blocking read.
    client = redis_client(settings, socket_timeout_s=settings.consumer_block_ms / 1000 + 10)
    celery = Celery("tokenbridge-supervisor", broker=settings.broker_url)
    celery.conf.update(celery_client_options(settings))
    worker = ConsumerWorker(
        client,
        settings,
        default_processors(client, settings.processors),
        enqueue=lambda gid: send_generation(celery, gid),
    )
    worker.install_signal_handlers()
    for problem in settings.order_problems():
        logging.getLogger(__name__).warning(problem)
    if settings.consumer_metrics_port:
        start_http_server(settings.consumer_metrics_port)
    worker.run()


if __name__ == "__main__":
    main()

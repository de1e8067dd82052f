# Build stage: the dependencies in their own layer (rebuilt only when requirements.txt changes), then the package.
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /venv
ENV PATH=/venv/bin:$PATH

WORKDIR /src
# The Python client, a dependency installed from its folder (requirements.txt names it as ./clients/python).
COPY clients/python ./clients/python
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md LICENSE ./
COPY bridge ./bridge
COPY app ./app
COPY tasks ./tasks
COPY workers ./workers
COPY tokenbridge ./tokenbridge
RUN pip install --no-deps . \
    && pip uninstall --yes pip

# Runtime stage: the virtualenv only (no compiler, no pip, no test or lint tools), run as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/venv/bin:$PATH

RUN useradd --create-home --uid 10001 tokenbridge
COPY --from=build /venv /venv
WORKDIR /app
COPY Procfile gunicorn.conf.py ./

USER tokenbridge

EXPOSE 8000

# The web process' liveness; compose gives worker, consumer and Flower checks of their own.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]

# The Procfile's web line; `exec` makes gunicorn PID 1 so it receives SIGTERM from `docker stop`.
CMD ["sh", "-c", "exec gunicorn --worker-class gevent --workers ${WEB_CONCURRENCY:-2} --worker-connections ${WEB_WORKER_CONNECTIONS:-10000} --bind 0.0.0.0:${PORT:-8000} --graceful-timeout 20 --no-control-socket -c gunicorn.conf.py 'app:create_app()'"]

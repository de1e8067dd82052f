FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 tokenbridge

WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . \
    && rm -rf build *.egg-info

USER tokenbridge

EXPOSE 8000

# The Procfile's web line; `exec` makes gunicorn PID 1 so it receives SIGTERM from `docker stop`.
CMD ["sh", "-c", "exec gunicorn --worker-class gevent --workers ${WEB_CONCURRENCY:-2} --worker-connections ${WEB_WORKER_CONNECTIONS:-10000} --bind 0.0.0.0:${PORT:-8000} --graceful-timeout 20 --no-control-socket -c gunicorn.conf.py 'app:create_app()'"]

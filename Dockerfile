# One image for every agentfleet process: the API, each worker pool, Flower, the simulator.
# docker-compose.yml and ops/k8s/ pick the process by its command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AGENTFLEET_LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md ./
COPY client ./client
COPY workers ./workers
COPY tasks ./tasks
COPY producer ./producer
COPY ops ./ops
# The client is on no package index: installed from its folder, it meets the fleet's
# dependency on agentfleet-client.
RUN pip install ./client . \
    && useradd --system --uid 10001 --home-dir /app agentfleet

# Not root: nothing here needs it, and Celery warns (in plain text, before logging is set
# up) when a worker runs as root.
USER agentfleet
EXPOSE 8000 5555 8799
CMD ["python", "-m", "uvicorn", "agentfleet.producer.api:app", "--host", "0.0.0.0", "--port", "8000"]

# payload-stats: `docker build -t payload-stats .`
# The same image runs every role: web (default), scheduler, init-db, flush.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv
COPY pyproject.toml setup.cfg setup.py README.md ./
COPY app ./app
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin stats

USER stats
ENV STATS_BIND=0.0.0.0:8000 \
    STATS_LOG_FORMAT=json
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

ENTRYPOINT ["payload-stats"]
CMD ["web"]

# One slim image for every cityingest entry point: bridge, consume, api, migrate (and simulate).
#   docker build -t cityingest .   then   docker run cityingest <command> --help
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY core core
COPY ingest ingest
COPY consumers consumers
COPY api api
COPY cli cli
COPY devstack devstack
COPY migrations migrations
COPY simulator simulator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# A fixed uid/gid, so that Kubernetes' runAsUser/runAsGroup and volume ownership can name them.
RUN groupadd --system --gid 10001 cityingest \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin cityingest
COPY --from=build /wheels /wheels
# pip compiles the bytecode at install time: the containers run with a read-only root filesystem.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# API, bridge and consumer HTTP endpoints (as docker-compose.yml and deploy/k8s run them).
EXPOSE 8000 9100 9101
ENTRYPOINT ["cityingest"]
CMD ["api", "--api-host", "0.0.0.0"]

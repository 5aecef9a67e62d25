# One slim image for every cityingest entry point: bridge, consume, api, migrate, simulate.
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
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin cityingest
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["cityingest"]
CMD ["api", "--api-host", "0.0.0.0"]

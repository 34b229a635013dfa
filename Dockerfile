# One image for every paperec service (streams worker, learner, serving nodes, simulator).
#
# Two stages: the first builds the wheel from the sources, the second installs only the wheel.
# The code then lives in root-owned site-packages, read-only to the service user, and every
# service keeps its state under one absolute directory, PAPEREC_STATE_DIR (a volume in
# docker-compose.yml): streams tables, learner checkpoints, the serving nodes' last snapshot.
# tests/integration/test_packaging.py builds the wheel from exactly the sources copied here and
# runs the services as a non-root user on a read-only install; tests/unit/test_docker_compose.py
# checks this file's user, state directory and volume against docker-compose.yml.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# Every package of the wheel (the packaging test fails when one is missing here).
COPY base ./base
COPY model ./model
COPY schemas ./schemas
COPY streams ./streams
COPY learner ./learner
COPY actor_service ./actor_service
COPY simulator ./simulator
COPY rollout ./rollout
COPY paperec ./paperec
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# pip compiles the bytecode at install time, so nothing needs to write to site-packages later.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# A fixed uid/gid, so volume ownership stays the same across rebuilds; no login shell.
RUN groupadd --system --gid 10001 paperec \
    && useradd --system --uid 10001 --gid paperec --home-dir /var/lib/paperec --no-create-home \
        --shell /usr/sbin/nologin paperec \
    && install -d -o paperec -g paperec -m 0750 /var/lib/paperec
# Absolute: the default (.paperec) is relative to the working directory, fine for the dev stack
# in a checkout, not for a service. HOME too: torch and matplotlib keep their caches there.
ENV PAPEREC_STATE_DIR=/var/lib/paperec \
    HOME=/var/lib/paperec \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A new named volume is initialised from this directory, ownership included.
VOLUME ["/var/lib/paperec"]
WORKDIR /var/lib/paperec
USER paperec:paperec
CMD ["paperec", "--help"]

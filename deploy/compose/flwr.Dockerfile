# Flower's SuperLink/SuperNode role, offline: Flower alone (no torch) on the
# Debian base made by debootstrap (deploy/images.py), laid out as Flower's own
# images are (venv in /python/venv, user app uid 49999, /app), so compose.yml
# runs either. Build context: deploy/compose/wheelhouse (wheels from the host's
# pip); the wheels stay in the build stage.
#
# --target runtime gives the same image without the venv: the app image's
# final stage (Dockerfile, RUNTIME), so Flower is not stored twice there.
ARG BASE=semanticfl/debian:bookworm
FROM ${BASE} AS build
ARG FLWR_VERSION
COPY . /wheelhouse
RUN python3 -m venv /python/venv \
    && /python/venv/bin/pip install --no-cache-dir --no-index \
        --find-links /wheelhouse "flwr==${FLWR_VERSION}"

FROM ${BASE} AS runtime
RUN useradd --no-create-home --home-dir /app --uid 49999 --user-group app \
    && mkdir -p /app && chown app:app /app
ENV PATH=/python/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8 \
    HOME=/app
WORKDIR /app
USER app

FROM runtime
COPY --from=build --chown=app:app /python/venv /python/venv

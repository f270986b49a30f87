# migrator as a container image.
#
#   docker build -t migrator .
#   docker run --rm -v migrator-state:/state -v "$PWD/plans:/plans:ro" \
#       -e OLD_PW -e NEW_PW migrator run /plans/acme.yaml --shard 1/4
#
# Layout inside the image:
#   /opt/migrator   a virtual environment holding the package (installed from this checkout)
#   /state          VOLUME: state DBs, locks, shard assignments. The working directory is "/",
#                   so a plan's default state file state/<name>.db is /state/<name>.db.
#   /plans          mount plans (and mailbox CSVs) here read-only; a plan's relative paths
#                   resolve against its own directory ("state: ../state/x.db" is /state/x.db).
# The process runs as the unprivileged user "migrator" (uid/gid 10001); secrets come in as
# environment variables named by the plan's password_env (never baked into the image).
#
# BASE_IMAGE: any Debian-like image with Python >= 3.11, "python3 -m venv" and useradd.
# The default is the official slim image; without a registry, build a base with debootstrap
# and "podman import" it (see integration/test_container_image.py).
# PIP_OPTIONS: extra pip arguments, e.g. "--no-index --find-links /wheels" for an offline
# build with a wheelhouse mounted at build time (podman build -v DIR:/wheels:ro).
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_OPTIONS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/migrator
COPY pyproject.toml README.md /src/
COPY migrator/ /src/migrator/
# hadolint ignore=DL3013
RUN /opt/migrator/bin/pip install ${PIP_OPTIONS} /src \
 && /opt/migrator/bin/pip uninstall -y pip \
 && find /opt/migrator -name __pycache__ -type d -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="migrator" \
      org.opencontainers.image.description="Migrate and keep in sync whole organisations' mailboxes"
RUN groupadd --system --gid 10001 migrator \
 && useradd --system --uid 10001 --gid 10001 --home-dir /state --no-create-home --shell /usr/sbin/nologin migrator \
 && mkdir -p /state /plans \
 && chown 10001:10001 /state \
 && chmod 0700 /state
COPY --from=build /opt/migrator /opt/migrator
ENV PATH=/opt/migrator/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/state
WORKDIR /
VOLUME ["/state"]
USER 10001:10001
ENTRYPOINT ["migrator"]
CMD ["--help"]

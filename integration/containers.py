"""Where the integration tests' servers run: in containers through docker-py when a
Docker engine is reachable, else from the local Debian binaries. The same tests run
either way; the pytest header says which (``integration servers: ...``) and every
server object carries ``backend`` ("docker" or "local").

Choice (``choose_backend``), by ``MIGRATOR_TEST_BACKEND``:

* ``auto`` (default): "docker" when ``docker.from_env()`` (``DOCKER_HOST``, or the
  default socket ``/var/run/docker.sock``) answers a ping within a few seconds and the
  engine is on this machine (a unix socket, or tcp to 127.0.0.1/localhost): the servers'
  files are bind-mounted at the same path and their ports reached on 127.0.0.1 (the
  containers use the host's network). Otherwise "local".
* ``docker``: the engine must be reachable (an error otherwise); ``local``: never Docker.

A containerised Dovecot runs the same configuration as the local one
(integration/dovecot.py writes it), its working directory bind-mounted at the same path,
``dovecot -F`` as the container's process and ``doveadm`` through ``exec``. Its image is
``MIGRATOR_TEST_DOVECOT_IMAGE`` when set (any image with Debian's Dovecot 2.3 at
/usr/sbin/dovecot), else one built once from ``DOVECOT_DOCKERFILE`` on
``MIGRATOR_TEST_BASE_IMAGE`` (default ``debian:bookworm-slim``).

Here (no Docker engine) the docker path was exercised through podman's Docker-compatible
API (``podman system service``; with crun unusable on hybrid cgroups, its
containers.conf must say ``runtime = "runc"`` and lower the default ulimits to
``nofile=4096:4096``, ``nproc=4096:4096``), see integration/test_containers.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from integration.dovecot import (
    DOVECOT,
    START_TIMEOUT,
    DovecotError,
    DovecotServer,
    Layout,
    ensure_mail_user,
    free_ports,
    make_certificate,
    wait_for_port,
)

BACKEND_ENV = "MIGRATOR_TEST_BACKEND"
IMAGE_ENV = "MIGRATOR_TEST_DOVECOT_IMAGE"
BASE_ENV = "MIGRATOR_TEST_BASE_IMAGE"
DEFAULT_BASE = "debian:bookworm-slim"
BUILT_IMAGE = "localhost/migrator-test-dovecot:bookworm"
PING_TIMEOUT = 5
DOVECOT_DOCKERFILE = """\
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      dovecot-imapd dovecot-pop3d openssl \\
 && rm -rf /var/lib/apt/lists/*
"""

Kind = Literal["docker", "local"]


@dataclass(frozen=True)
class Backend:
    """Where servers run. ``client`` is a docker.DockerClient for "docker"."""

    kind: Kind
    detail: str
    client: Any = None
    image: str = ""  # MIGRATOR_TEST_DOVECOT_IMAGE, if given
    base_image: str = DEFAULT_BASE  # MIGRATOR_TEST_BASE_IMAGE: what a built Dovecot image starts from

    def describe(self) -> str:
        return f"{self.kind} ({self.detail})"


def _local_engine(base_url: str) -> bool:
    url = urlparse(base_url)
    if url.scheme in ("unix", "http+unix", "npipe", ""):
        return True
    return url.hostname in ("127.0.0.1", "localhost", "::1")


def docker_engine(env: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """(client, detail) when a local Docker engine answers, else (None, why not)."""
    env = os.environ if env is None else env
    try:
        import docker
    except ImportError:
        return None, "docker-py not installed"
    try:
        client = docker.from_env(timeout=PING_TIMEOUT, environment=dict(env))
        client.ping()
    except Exception as exc:  # any failure means: no engine here
        where = env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return None, f"no Docker engine at {where}: {type(exc).__name__}"
    base_url = str(client.api.base_url)
    where = env.get("DOCKER_HOST", base_url)
    if not _local_engine(where):
        client.close()
        return None, f"Docker engine at {where} is not on this machine (bind mounts and 127.0.0.1 ports need one)"
    try:
        version = client.version()
        name = next((c.get("Name", "") for c in version.get("Components", []) if c.get("Name")), "Engine")
        return client, f"{name} {version.get('Version', '?')} at {where}"
    except Exception:
        return client, f"engine at {where}"


def choose_backend(env: Mapping[str, str] | None = None) -> Backend:
    """The backend for this session (see the module docstring). RuntimeError when
    ``MIGRATOR_TEST_BACKEND=docker`` and no engine answers, or the value is unknown."""
    env = os.environ if env is None else env
    wanted = env.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "docker", "local"):
        raise RuntimeError(f"{BACKEND_ENV}={wanted!r}: use auto, docker or local")
    if wanted != "local":
        client, detail = docker_engine(env)
        if client is not None:
            return Backend("docker", detail, client, env.get(IMAGE_ENV, ""), env.get(BASE_ENV, DEFAULT_BASE))
        if wanted == "docker":
            raise RuntimeError(f"{BACKEND_ENV}=docker but {detail}")
        return Backend("local", f"{DOVECOT}; {detail}")
    return Backend("local", f"{DOVECOT}; {BACKEND_ENV}=local")


def dovecot_image(backend: Backend) -> str:
    """The Dovecot image: the one configured, or one built once (cached by its tag)."""
    if backend.image:
        return backend.image
    import docker

    try:
        backend.client.images.get(BUILT_IMAGE)
        return BUILT_IMAGE
    except docker.errors.ImageNotFound:
        pass
    backend.client.images.build(
        fileobj=io.BytesIO(DOVECOT_DOCKERFILE.encode()),
        tag=BUILT_IMAGE,
        buildargs={"BASE_IMAGE": backend.base_image},
        network_mode="host",
        rm=True,
        forcerm=True,
    )
    return BUILT_IMAGE


class ContainerDovecot(DovecotServer):
    """A DovecotServer whose master runs in a container (host network, its directory
    bind-mounted at the same path). Same interface and files as the local one."""

    backend: Kind = "docker"

    def __init__(
        self,
        client: Any,
        image: str,
        layout: Layout = "slash",
        parent_dir: str | os.PathLike[str] | None = None,
        oauth2: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(layout=layout, parent_dir=parent_dir, oauth2=oauth2)
        self.client = client
        self.image = image
        self.container: Any = None

    def start(self) -> ContainerDovecot:
        """Write the configuration, start the container and wait until the ports accept.
        DovecotError (with the log's tail) when it does not come up."""
        # Root inside the container can switch to any numeric uid; the login and internal
        # users are those of the image's Dovecot package.
        self.mail_uid, self.mail_gid, _login, _internal = ensure_mail_user()
        self.root = Path(tempfile.mkdtemp(prefix="migrator-dovecot-", dir=self._parent_dir))
        self.root.chmod(0o755)
        for sub in ("run", "state", "ssl", "home", "users"):
            (self.root / sub).mkdir()
        (self.root / "home").chmod(0o755)
        make_certificate(self.root / "ssl")
        (self.root / "users").chmod(0o755)
        volumes = {str(self.root): {"bind": str(self.root), "mode": "rw"}}
        if self.oauth2 is not None and self.oauth2[1]:
            ca_dir = str(Path(self.oauth2[1]).resolve().parent)
            volumes.setdefault(ca_dir, {"bind": ca_dir, "mode": "ro"})
        last_error = ""
        for attempt in range(5):
            self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = free_ports(4)
            self.conf_path.write_text(self._config("dovenull", "dovecot"), encoding="utf-8")
            self.conf_path.chmod(0o644)
            if self.oauth2 is not None:
                oauth_conf = self._dir() / "dovecot-oauth2.conf.ext"
                oauth_conf.write_text(self._oauth2_config(), encoding="utf-8")
                oauth_conf.chmod(0o644)
            self.container = self.client.containers.run(
                self.image,
                ["/usr/sbin/dovecot", "-F", "-c", str(self.conf_path)],
                detach=True,
                name=f"{self.root.name}-{attempt}",
                network_mode="host",
                volumes=volumes,
                labels={"org.migrator.test": "dovecot"},
            )
            try:
                self._wait_ready(time.monotonic() + START_TIMEOUT)
                return self
            except DovecotError as exc:
                last_error = str(exc)
                self._remove_container()
                if "in use" not in last_error:
                    break
        raise DovecotError(f"dovecot did not start in a container: {last_error}")

    def _wait_ready(self, deadline: float) -> None:
        for port in (self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port):
            while True:
                try:
                    wait_for_port(self.host, port, min(deadline, time.monotonic() + 0.5))
                    break
                except DovecotError:
                    self.container.reload()
                    if self.container.status not in ("created", "running") or time.monotonic() > deadline:
                        logs = self.container.logs(tail=30).decode(errors="replace")
                        raise DovecotError(f"port {port} is not listening: {logs}\n{self._log_tail()}") from None

    def _remove_container(self) -> None:
        if self.container is None:
            return
        with contextlib.suppress(Exception):
            self.container.stop(timeout=10)
        with contextlib.suppress(Exception):
            self.container.remove(force=True)
        self.container = None

    def stop(self) -> None:
        """Stop and remove the container, remove the directory. Idempotent."""
        self._remove_container()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def doveadm(self, *args: str) -> str:
        """``doveadm -c <conf> *args`` inside the container; DovecotError on failure."""
        if self.container is None:
            raise DovecotError("server not started")
        code, (out, err) = self.container.exec_run(["/usr/bin/doveadm", "-c", str(self.conf_path), *args], demux=True)
        if code != 0:
            text = (err or b"").decode(errors="replace").strip()
            raise DovecotError(f"doveadm {' '.join(args)} failed ({code}): {text}")
        return (out or b"").decode(errors="replace")


def start_dovecot(
    backend: Backend,
    layout: Layout = "slash",
    parent_dir: str | os.PathLike[str] | None = None,
) -> DovecotServer:
    """A started Dovecot on ``backend``; ``server.backend`` says where it runs."""
    if backend.kind == "docker":
        server: DovecotServer = ContainerDovecot(backend.client, dovecot_image(backend), layout, parent_dir)
    else:
        server = DovecotServer(layout=layout, parent_dir=parent_dir)
        server.backend = "local"  # type: ignore[attr-defined]
    server.start()
    return server

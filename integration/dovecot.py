"""A private, throwaway Dovecot on 127.0.0.1 for integration tests.

``DovecotServer`` writes its own configuration under a temporary directory, picks
free ports, starts the master process and stops it again. It never touches the
system instance. Two namespace layouts are available:

* ``layout="slash"``: personal namespace prefix ``""`` with separator ``"/"``
  (Dovecot's usual IMAP view);
* ``layout="courier"``: prefix ``"INBOX."`` with separator ``"."`` (what Courier
  and Debian's Cyrus show), over the Maildir++ on-disk layout.

Usage::

    server = DovecotServer(layout="slash")
    server.start()
    server.add_user("alice")
    account = server.account("alice")      # a migrator.model.Account
    ...
    server.stop()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from migrator.model import Account, Secret

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
MAIL_USER = "migratortest"  # system user owning the mail when we run as root
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

Layout = Literal["slash", "courier"]
SPECIAL_FOLDERS = (("Drafts", "\\Drafts"), ("Sent", "\\Sent"), ("Trash", "\\Trash"), ("Junk", "\\Junk"))
ARCHIVE_FOLDER = ("Archive", "\\Archive")


class DovecotError(RuntimeError):
    """The test server could not be configured, started or driven."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(host: str, port: int, deadline: float) -> None:
    """Block until ``host:port`` accepts a TCP connection, or raise at ``deadline``."""
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise DovecotError(f"port {port} is not listening") from None
            time.sleep(0.05)


def ensure_mail_user() -> tuple[int, int, str, str]:
    """(uid, gid, login user, internal user) the server's processes run as.

    As root, Dovecot refuses to access mail as uid 0, so a dedicated system user
    is created when missing; otherwise everything runs as the current user."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return me.pw_uid, me.pw_gid, me.pw_name, me.pw_name
    try:
        entry = pwd.getpwnam(MAIL_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                MAIL_USER,
            ],
            check=False,
            capture_output=True,
            timeout=30,
        )
        entry = pwd.getpwnam(MAIL_USER)
    return entry.pw_uid, entry.pw_gid, "dovenull", "dovecot"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1: (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key.chmod(0o600)
    cert.chmod(0o644)
    return cert, key


def _namespace_block(layout: Layout) -> str:
    separator, prefix = ("/", "") if layout == "slash" else (".", "INBOX.")
    mailboxes = "".join(
        f"  mailbox {name} {{\n    special_use = {use}\n  }}\n" for name, use in (*SPECIAL_FOLDERS, ARCHIVE_FOLDER)
    )
    return f"namespace inbox {{\n  inbox = yes\n  separator = {separator}\n  prefix = {prefix}\n{mailboxes}}}\n"


def reap_orphans(parent: Path) -> list[Path]:
    """Stop and remove private Dovecots whose test process is gone (killed before its
    fixtures could tear down): on tmpfs their mail would otherwise hold memory until
    the machine runs out. Only directories this module made (owner.pid inside) are touched."""
    reaped = []
    for root in parent.glob("migrator-dovecot-*"):
        try:
            owner = int((root / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
            continue  # its test session still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            master = int((root / "run" / "master.pid").read_text().strip())
            os.kill(master, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


class DovecotServer:
    """One private Dovecot master with IMAP, IMAPS, POP3 and POP3S on 127.0.0.1.

    Not thread-safe for ``add_user`` (tests add users from one thread)."""

    host = "127.0.0.1"

    def __init__(
        self,
        layout: Layout = "slash",
        parent_dir: str | os.PathLike[str] | None = None,
        oauth2: tuple[str, str] | None = None,
    ) -> None:
        """``oauth2``: (introspection URL, CA file) to also accept XOAUTH2/OAUTHBEARER
        logins, checked by Dovecot's oauth2 passdb against that URL (RFC 7662 style
        POST ``token=...``). Only the domain of the returned ``username`` must match
        the login's: an app token of a tenant opens that tenant's mailboxes."""
        if layout not in ("slash", "courier"):
            raise ValueError(f"unknown layout {layout!r}")
        self.oauth2 = oauth2
        self.layout: Layout = layout
        self.separator = "/" if layout == "slash" else "."
        self.prefix = "" if layout == "slash" else "INBOX."
        self._parent_dir = parent_dir
        self.root: Path | None = None
        self.imap_port = self.imaps_port = self.pop3_port = self.pop3s_port = 0
        self.mail_uid = self.mail_gid = -1
        self._users: dict[str, str] = {}
        self._pid: int | None = None

    # ------------------------------------------------------------------ paths
    def _dir(self) -> Path:
        if self.root is None:
            raise DovecotError("server not started")
        return self.root

    @property
    def conf_path(self) -> Path:
        return self._dir() / "dovecot.conf"

    @property
    def cert_path(self) -> Path:
        return self._dir() / "ssl" / "cert.pem"

    @property
    def log_path(self) -> Path:
        return self._dir() / "dovecot.log"

    @property
    def users_dir(self) -> Path:
        """One passwd-file per user: a new file is read at once, whereas Dovecot
        stats a changed shared file at most once a second."""
        return self._dir() / "users"

    def home(self, user: str) -> Path:
        return self._dir() / "home" / user

    def maildir(self, user: str) -> Path:
        return self.home(user) / "Maildir"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DovecotServer:
        """Write the configuration, start the master and wait until the ports accept.

        Raises DovecotError (with the log's tail) when the server does not come up."""
        if not Path(DOVECOT).exists():
            raise DovecotError(f"{DOVECOT} is missing: install dovecot-imapd and dovecot-pop3d")
        self.mail_uid, self.mail_gid, login_user, internal_user = ensure_mail_user()
        reap_orphans(Path(self._parent_dir or tempfile.gettempdir()))
        self.root = Path(tempfile.mkdtemp(prefix="migrator-dovecot-", dir=self._parent_dir))
        self.root.chmod(0o755)
        (self.root / "owner.pid").write_text(f"{os.getpid()}\n", encoding="ascii")
        for sub in ("run", "state", "ssl", "home", "users"):
            (self.root / sub).mkdir()
        (self.root / "home").chmod(0o755)
        make_certificate(self.root / "ssl")
        (self.root / "users").chmod(0o755)
        last_error = ""
        for _attempt in range(5):
            self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = free_ports(4)
            self.conf_path.write_text(self._config(login_user, internal_user), encoding="utf-8")
            self.conf_path.chmod(0o644)
            if self.oauth2 is not None:
                oauth_conf = self._dir() / "dovecot-oauth2.conf.ext"
                oauth_conf.write_text(self._oauth2_config(), encoding="utf-8")
                oauth_conf.chmod(0o644)
            # The daemon must not inherit a pipe of ours (communicate() would wait for it).
            startup_log = self._dir() / "startup.log"
            with startup_log.open("w") as out:
                proc = subprocess.run(
                    [DOVECOT, "-c", str(self.conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=START_TIMEOUT,
                )
            if proc.returncode == 0:
                break
            last_error = startup_log.read_text(errors="replace")
            if "in use" not in last_error:
                raise DovecotError(f"dovecot did not start: {last_error.strip()}")
        else:
            raise DovecotError(f"dovecot did not start: {last_error.strip()}")
        deadline = time.monotonic() + START_TIMEOUT
        try:
            for port in (self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port):
                wait_for_port(self.host, port, deadline)
            self._pid = self._read_pid(deadline)
        except DovecotError as exc:
            raise DovecotError(f"{exc}; log:\n{self._log_tail()}") from None
        return self

    def _read_pid(self, deadline: float) -> int:
        pid_file = self._dir() / "run" / "master.pid"
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise DovecotError("dovecot wrote no master.pid")
            time.sleep(0.05)
        return int(pid_file.read_text().strip())

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate the master (SIGTERM, bounded wait, then SIGKILL) and remove the
        temporary directory. Idempotent."""
        if self._pid is not None:
            self._terminate(self._pid)
            self._pid = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _terminate(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ users
    def add_user(self, name: str, password: str = "pw") -> None:
        """Create (or re-password) a user with an empty home owned by the mail user.

        Dovecot re-reads the passwd-file when it changes (no auth cache is
        configured), so the user can log in immediately."""
        if not name or any(c in name for c in ":/\n\r\t ") or name in (".", ".."):
            raise ValueError(f"invalid user name {name!r}")
        if any(c in password for c in ":\n\r"):
            raise ValueError("a password cannot contain ':' or line breaks here")
        home = self.home(name)
        home.mkdir(exist_ok=True)
        os.chown(home, self.mail_uid, self.mail_gid)
        home.chmod(0o700)
        self._users[name] = password
        line = f"{name}:{{PLAIN}}{password}:{self.mail_uid}:{self.mail_gid}::{home}::\n"
        tmp = self.users_dir / f".{name}.tmp"
        tmp.write_text(line, encoding="utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, self.users_dir / name)

    def chown_home(self, user: str) -> None:
        """Hand every file under the user's home to the mail user (after a test wrote
        Maildir files directly as root)."""
        for dirpath, dirnames, filenames in os.walk(self.home(user)):
            os.chown(dirpath, self.mail_uid, self.mail_gid)
            for name in (*dirnames, *filenames):
                os.chown(os.path.join(dirpath, name), self.mail_uid, self.mail_gid, follow_symlinks=False)

    def force_resync(self, user: str) -> None:
        """Make Dovecot rescan the user's mailboxes (after direct Maildir writes)."""
        self.chown_home(user)
        self.doveadm("force-resync", "-u", user, "*")

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c <conf> *args`` and return its stdout; DovecotError on failure."""
        proc = subprocess.run(
            [DOVEADM, "-c", str(self.conf_path), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise DovecotError(f"doveadm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def account(
        self,
        user: str,
        password: str = "pw",
        security: Literal["tls", "starttls", "none"] = "none",
        **kwargs: object,
    ) -> Account:
        """An IMAP Account for ``user``: the IMAPS port for security="tls", the IMAP
        port otherwise. Extra keyword arguments go to Account (verify_tls, ca_file,
        timeout, ...)."""
        port = self.imaps_port if security == "tls" else self.imap_port
        return Account(
            type="imap",
            host=self.host,
            port=port,
            security=security,
            user=user,
            secret=Secret(value=password),
            **kwargs,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------ config
    def _oauth2_config(self) -> str:
        assert self.oauth2 is not None
        url, ca_file = self.oauth2
        return (
            "introspection_mode = post\n"
            f"introspection_url = {url}\n"
            "username_attribute = username\n"
            "username_format = %d\n"
            "active_attribute = active\n"
            "active_value = true\n"
            f"tls_ca_cert_file = {ca_file}\n"
        )

    def _config(self, login_user: str, internal_user: str) -> str:
        root = self._dir()
        # Maildir++ on disk forbids "." in names; with "/" as the IMAP separator the
        # listescape plugin stores it escaped, so "a.b" is a valid folder name.
        plugins = "mail_plugins = $mail_plugins listescape\n" if self.layout == "slash" else ""
        dh = "ssl_dh = </usr/share/dovecot/dh.pem\n" if Path("/usr/share/dovecot/dh.pem").exists() else ""
        oauth_mechs = passwd_mechs = oauth_passdb = ""
        if self.oauth2 is not None:
            oauth_mechs = " xoauth2 oauthbearer"
            passwd_mechs = "\n  mechanisms = plain login apop"
            oauth_passdb = (
                "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {root}/dovecot-oauth2.conf.ext\n}}\n"
            )
        return f"""# generated by integration/dovecot.py: throwaway test instance
instance_name = migrator-test-{root.name}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 1
mail_fsync = optimized

ssl = yes
ssl_cert = <{root}/ssl/cert.pem
ssl_key = <{root}/ssl/key.pem
{dh}disable_plaintext_auth = no
# apop: the POP3 greeting offers an APOP timestamp (never advertised over IMAP)
auth_mechanisms = plain login apop{oauth_mechs}
auth_failure_delay = 0

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/users/%n{passwd_mechs}
}}
{oauth_passdb}userdb {{
  driver = passwd-file
  args = username_format=%n {root}/users/%n
}}

mail_location = maildir:~/Maildir
{plugins}{_namespace_block(self.layout)}
mail_max_userip_connections = 200
pop3_uidl_format = %08Xu%08Xv
imap_max_line_length = 4M

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
service imap {{
  process_limit = 256
}}
service auth {{
  unix_listener auth-userdb {{
    mode = 0666
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

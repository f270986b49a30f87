"""URLs for `migrator copy SOURCE DEST`: imap://, imaps://, maildir:, mbox: (pop3 later).

Passwords never come from the URL: MIGRATOR_SOURCE_PASSWORD / MIGRATOR_DEST_PASSWORD
or a prompt (the CLI supplies them as a Secret).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from migrator.errors import PlanError
from migrator.model import Account, Secret

NETWORK_SCHEMES = {
    "imap": ("imap", "starttls", 143),
    "imaps": ("imap", "tls", 993),
    "pop3": ("pop3", "starttls", 110),
    "pop3s": ("pop3", "tls", 995),
}
LOCAL_SCHEMES = {"maildir", "mbox"}
TRUE = {"1", "on", "yes", "true"}
FALSE = {"0", "off", "no", "false"}


def _flag(query: dict[str, list[str]], name: str, default: bool, url: str) -> bool:
    if name not in query:
        return default
    value = query[name][-1].lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise PlanError(f"{url}: ?{name}= must be on or off, not {value!r}")


def parse_url(url: str, secret: Secret | None = None) -> Account:
    """Turn a SOURCE/DEST URL into an Account. Raises PlanError (one line) when invalid."""
    label = redact(url)
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep:
        raise PlanError(f"{label}: not a URL; expected imap://, imaps://, maildir:/path or mbox:/path")
    if scheme in LOCAL_SCHEMES:
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise PlanError(f"{label}: no path after {scheme}:")
        return Account(type=scheme, path=str(Path(unquote(path)).expanduser().resolve()))
    if scheme not in NETWORK_SCHEMES:
        raise PlanError(f"{label}: unknown scheme {scheme!r}; use imap, imaps, pop3, pop3s, maildir or mbox")
    kind, security, default_port = NETWORK_SCHEMES[scheme]
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" not in netloc:
        raise PlanError(f"{label}: no user; write {scheme}://USER@HOST[:PORT]")
    userinfo = netloc.rpartition("@")[0]
    if ":" in userinfo:
        raise PlanError(
            f"{label}: a password may not be written in the URL; "
            "set MIGRATOR_SOURCE_PASSWORD / MIGRATOR_DEST_PASSWORD or answer the prompt"
        )
    user = unquote(userinfo)
    try:
        host = parts.hostname
        port = parts.port or default_port
    except ValueError as exc:
        raise PlanError(f"{label}: {exc}") from None
    if not host:
        raise PlanError(f"{label}: no host")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"tls", "verify", "ca_file", "timeout"}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise PlanError(f"{label}: unknown option(s) {names}; known: tls, verify, ca_file, timeout")
    if not _flag(query, "tls", True, label):
        if security == "tls":
            raise PlanError(f"{label}: ?tls=off contradicts {scheme}://; use {kind}:// instead")
        security = "none"
    timeout = 60.0
    if "timeout" in query:
        try:
            timeout = float(query["timeout"][-1])
        except ValueError:
            raise PlanError(f"{label}: ?timeout= must be a number of seconds") from None
    ca_file = query.get("ca_file", [None])[-1]
    return Account(
        type=kind,
        host=host,
        port=port,
        security=security,  # type: ignore[arg-type]
        verify_tls=_flag(query, "verify", True, label),
        ca_file=str(Path(ca_file).expanduser().resolve()) if ca_file else None,
        user=user,
        secret=secret,
        timeout=timeout,
    )


def redact(url: str) -> str:
    """The URL without any password a user may have typed into it."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, _, hostport = netloc.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}://{userinfo}@{hostport}{slash}{tail}"


def pair_state_name(source: str, dest: str) -> str:
    """Default state file name for a `copy` pair: stable for the same two URLs."""
    digest = hashlib.sha256(f"{source}\n{dest}".encode()).hexdigest()[:12]
    return f"copy-{digest}.db"

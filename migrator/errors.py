"""The error tree. Every error knows whether retrying can help (rclone fserrors)."""

from __future__ import annotations


class MigratorError(Exception):
    """Base class. ``retryable``: a fresh connection and a second try may succeed
    (a class default; ``retryable=`` overrides it for one error)."""

    retryable: bool = False

    def __init__(self, *args: object, retryable: bool | None = None):
        super().__init__(*args)
        if retryable is not None:
            self.retryable = retryable


class PlanError(MigratorError):
    """The plan, a mailbox CSV or a command-line argument is invalid (exit 2).

    ``problems`` holds one line per problem, each naming the file, line and field.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ConnectError(MigratorError):
    """Could not reach or talk to a server (exit 3 when nothing could be done)."""

    retryable = True


class AuthError(ConnectError):
    """The server refused the credentials. Retrying with the same ones cannot help."""

    retryable = False


class TLSError(ConnectError):
    """Certificate verification or TLS negotiation failed; not retryable."""

    retryable = False


class TransientError(MigratorError):
    """A dropped connection, a timeout, a throttling answer: reconnect and retry."""

    retryable = True

    def __init__(self, message: str, backoff_seconds: float | None = None):
        super().__init__(message)
        self.backoff_seconds = backoff_seconds


class MessageError(MigratorError):
    """One message could not be copied (refused by the destination, vanished at the
    source, ...). It is recorded against that message; the run goes on."""

    def __init__(self, message: str, msg_id: str | None = None):
        super().__init__(message)
        self.msg_id = msg_id


class FolderError(MigratorError):
    """A folder cannot be created or selected; that folder fails, the rest go on."""


class QuotaError(MigratorError):
    """The destination mailbox is full: stop this mailbox, others go on."""


class LockedError(MigratorError):
    """Another run holds the state lock."""


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, MigratorError):
        return exc.retryable
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))

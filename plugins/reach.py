"""Why a device cannot be reached or served, in one line an operator can act on.

The protocol libraries say ``[Errno 111] Connect call failed ('127.0.0.1',
5020)``, ``[Errno -2] Name or service not known`` or ``[code:135] Not
authorized``, each in its own way and often without the device. Every
built-in session turns a failed connect into one :class:`ConnectionError`
whose text is ``<device> at <endpoint>: <why>``, the why in plain words with
the library's own words after them where they add something. The collector
records that line in its ``connect-failed`` event and in the gap records.

A simulator that cannot listen (``converge simulate``, ``make demo``) raises
one :class:`~engine.errors.ConvergeError` the same way: ``cannot serve
<device> (<protocol>) at <endpoint>: <why>``, the why found by trying to bind
the port itself (the libraries report a busy port as "Could not start
listen" or bury the errno in a chain).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Iterator

from engine.errors import ConvergeError

REFUSED = "connection refused: nothing listens there, or a firewall rejects the connection"
NOT_FOUND = "host name not found (it does not resolve)"
UNREACHABLE = "host unreachable: no route to it"
RESET = "the connection was reset: the port may speak another protocol (TLS, or plain)"
CREDENTIALS = "user name or password refused"

IN_USE = "the port is in use; stop what listens there or give the device another port"
PRIVILEGED = "permission denied: ports below 1024 need privileges; use a port above 1023"
NOT_LOCAL = "the address is not one of this machine's; a simulator serves local addresses only"

_BY_TYPE: tuple[tuple[type[OSError], str], ...] = (
    (socket.gaierror, NOT_FOUND),
    (ConnectionRefusedError, REFUSED),
    (ConnectionResetError, RESET),
)
_BY_ERRNO = {
    errno.EHOSTUNREACH: UNREACHABLE,
    errno.ENETUNREACH: UNREACHABLE,
    errno.EADDRINUSE: IN_USE,
    errno.EACCES: PRIVILEGED,
    errno.EADDRNOTAVAIL: NOT_LOCAL,
}


def unreachable(device: str, where: str, error: BaseException) -> ConnectionError:
    """The one-line error of a connect to ``where`` that failed with ``error``."""
    return ConnectionError(f"{device} at {where}: {why(error)}")


def refused_credentials(device: str, where: str, said: str) -> ConnectionError:
    """The one-line error of a server that refused the user name or password."""
    return ConnectionError(f"{device} at {where}: {CREDENTIALS} ({one_line(said)})")


def cannot_serve(
    what: str, where: str, host: str, port: int, error: BaseException
) -> ConvergeError:
    """The one-line error of a simulator that could not listen on ``host:port``."""
    problem = bind_problem(host, port)
    return ConvergeError(f"cannot serve {what} at {where}: {why(problem or error)}")


def why(error: BaseException) -> str:
    """The cause of a failed connect or listen in plain words (the first OS error in its chain)."""
    cause = _os_error(error)
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = cause.verify_message or cause.reason or "certificate verify failed"
        return f"TLS: the server's certificate is not trusted ({detail})"
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed ({cause.reason or one_line(str(cause))})"
    for kind, reason in _BY_TYPE:
        if isinstance(cause, kind):
            return reason
    if cause is not None and cause.errno in _BY_ERRNO:
        return _BY_ERRNO[cause.errno]
    return one_line(str(error)) or type(error).__name__


def bind_problem(host: str, port: int) -> OSError | None:
    """Why a TCP server could not listen on ``host:port`` now (``None`` when it could)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as problem:
        return problem
    return None


def _os_error(error: BaseException) -> OSError | None:
    """``error`` or the first exception it was raised from or during that is an OS error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and not isinstance(current, TimeoutError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(text: str) -> str:
    """The first line of a library's message, without an ``[Errno N]`` prefix."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.split("] ", 1)[1] if first.startswith("[Errno") and "] " in first else first


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    """Silence one library logger for a moment: one that logs a traceback for an error
    the caller reports itself, in one line."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)

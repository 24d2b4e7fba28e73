"""What the network site clients (s3://, vault://) share: option parsing and plain-words
reasons for connection failures, so every site explains an outage the same way."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping

from .base import SiteError


def seconds_option(options: Mapping[str, object], key: str, default: float, kind: str) -> float:
    """A positive number of seconds from a site's options; ``kind`` ("S3", "vault") names the site."""
    value = options.get(key, default)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SiteError(f"{kind} site option {key} must be a number of seconds, got {value!r}") from None
    if not number > 0:
        raise SiteError(f"{kind} site option {key} must be positive, got {number}")
    return number


_TEXT_REASONS = (("Connection refused", "connection refused"),
                 ("Name or service not known", "host name not found"),
                 ("timed out", "connection timed out"))


def connection_reason(exc: BaseException, special: Callable[[BaseException], str | None] | None = None,
                      text_reasons: tuple[tuple[str, str], ...] = ()) -> str:
    """Why a connection failed, in a few plain words, from the socket error under the HTTP
    client's exceptions (their causes, contexts, args, and botocore's ``kwargs["error"]``).
    ``special`` may name a client-specific cause first (e.g. TLS); ``text_reasons`` are
    extra (needle, reason) pairs tried before the generic ones on the message text."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if special is not None and (reason := special(err)) is not None:
            return reason
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, socket.gaierror):
            return "host name not found"
        if isinstance(err, ConnectionResetError):
            return "connection reset"
        if isinstance(err, TimeoutError):
            return "connection timed out"
        kwargs = getattr(err, "kwargs", None)
        if isinstance(kwargs, dict) and isinstance(kwargs.get("error"), BaseException):
            stack.append(kwargs["error"])
        stack.extend([err.__cause__, err.__context__])
        stack.extend(a for a in getattr(err, "args", ()) if isinstance(a, BaseException))
    text = str(exc)
    for needle, reason in (*text_reasons, *_TEXT_REASONS):
        if needle in text:
            return reason
    return text or type(exc).__name__

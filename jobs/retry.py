"""Transient object-store errors, retried inside the trainer: backoff with full jitter to a deadline.

An object store goes away for seconds at a time (a gateway restart, throttling, a node of the
store rescheduled). Failing the attempt on the first refused connection would cost a whole gang
restart and a resume for every such blip, so each filesystem call is retried, with exponential
backoff and full jitter (a random sleep in [0, min(cap, base * 2**n)], so ranks and pods that
failed together do not come back together), until `FORGELINE_STORAGE_RETRY_SECONDS` (default
300) have passed since the call's first try. Then the call raises `StorageUnavailable`, an
ordinary exception: the stage exits 1, which the operator retries (2 and 3 are the permanent
codes, errors.py), and the next attempt resumes from the newest committed checkpoint.

What is transient is decided from the error alone: an HTTP status (5xx, 408, 429) or an S3 code
(SlowDown, ServiceUnavailable, ...) when the store answered; a refused, reset or timed-out
connection when it did not (by class name through the MRO, so botocore's and aiohttp's own
classes count without this module importing either). A missing object (404: FileNotFoundError,
which readers turn into "no manifest") and a refused request (403: PermissionError) are answers,
not faults: they are raised at once, the latter reworded to say what to check. s3fs retries a
few of these itself for about a second; this layer covers the outage that lasts longer.

`Retrying` wraps an fsspec filesystem so every method call goes through `call`; storage.Storage
hands it out from `fs()`, so every storage helper gets the policy without knowing of it.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

RETRY_SECONDS_ENV = "FORGELINE_STORAGE_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 300.0

# Class names (anywhere in the exception's MRO) of "the store did not answer": the builtin
# ConnectionError family and TimeoutError, botocore's connection and HTTP-client errors, aiohttp's
# connection errors, fsspec's timeout.
TRANSIENT_CLASS_NAMES = frozenset(
    {
        "ConnectionError",
        "TimeoutError",
        "HTTPClientError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ClientConnectionError",
        "ServerDisconnectedError",
        "ClientPayloadError",
        "ResponseParserError",
        "IncompleteRead",
        "FSTimeoutError",
    }
)
# errno values of a connection or server fault; s3fs maps ServiceUnavailable and SlowDown to EBUSY,
# InternalError to EREMOTEIO and unknown server codes to EIO.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.EBUSY,
        errno.EAGAIN,
        errno.ETIMEDOUT,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EREMOTEIO,
    }
)
TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
    }
)
# Answers, not faults: never retried.
PERMANENT_TYPES = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


class StorageUnavailable(Exception):
    """The object store kept failing past the retry deadline; the attempt fails as retryable (exit 1)."""


class StorageAccessDenied(PermissionError):
    """The store refused the request (403): credentials or bucket policy, not a fault to wait out."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_answer(exc: BaseException) -> tuple[int, str] | None:
    """(HTTP status, S3 error code) of a botocore ClientError, or None when the store did not answer."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if not isinstance(status, int):
        return None
    return status, str(response.get("Error", {}).get("Code", ""))


def is_transient(exc: BaseException) -> bool:
    """Whether exc is worth retrying: a fault of the connection or the server, not an answer."""
    if isinstance(exc, PERMANENT_TYPES):
        return False
    for cause in _causes(exc):
        answer = _http_answer(cause)
        if answer is not None:
            status, code = answer
            return status >= 500 or status in (408, 429) or code in TRANSIENT_S3_CODES
        if any(k.__name__ in TRANSIENT_CLASS_NAMES for k in type(cause).__mro__):
            return True
        if isinstance(cause, OSError) and cause.errno in TRANSIENT_ERRNOS:
            return True
    return False


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by a deadline per call."""

    deadline: float = DEFAULT_RETRY_SECONDS
    base: float = 0.2
    cap: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_env(cls) -> RetryPolicy:
        raw = os.environ.get(RETRY_SECONDS_ENV, "")
        try:
            deadline = float(raw) if raw else DEFAULT_RETRY_SECONDS
        except ValueError:
            raise ValueError(
                f"{RETRY_SECONDS_ENV}={raw!r}: expected a number of seconds (0 disables retries)"
            ) from None
        return cls(deadline=max(deadline, 0.0))

    def backoff(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.cap, self.base * 2**attempt))

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """fn(), retried while it fails transiently and the deadline allows; see the module docstring."""
        started = self.clock()
        attempt = 0
        while True:
            try:
                return fn()
            except PermissionError as exc:
                raise StorageAccessDenied(
                    f"{what}: access denied by the object store ({exc}); check the credentials the pod "
                    "gets (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the storage Secret) and the "
                    "bucket policy"
                ) from exc
            except Exception as exc:
                if not is_transient(exc):
                    raise
                spent = self.clock() - started
                if spent >= self.deadline:
                    raise StorageUnavailable(
                        f"{what}: object store unavailable for {spent:.0f}s ({attempt + 1} tries, "
                        f"{RETRY_SECONDS_ENV}={self.deadline:g}); last error: {type(exc).__name__}: {exc}"
                    ) from exc
                delay = min(self.backoff(attempt), max(self.deadline - spent, 0.0))
                print(
                    f"forgeline: storage: {what}: {type(exc).__name__}: {exc}; retry {attempt + 1} in "
                    f"{delay:.2f}s ({spent:.0f}s of {self.deadline:g}s spent)",
                    file=sys.stderr,
                    flush=True,
                )
                self.sleep(delay)
                attempt += 1


class Retrying:
    """An fsspec filesystem whose method calls go through a RetryPolicy; other attributes pass through."""

    def __init__(self, fs: Any, policy: RetryPolicy) -> None:
        self._fs = fs
        self._policy = policy

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def retried(*args: Any, **kwargs: Any) -> Any:
            where = "".join(f" {a}" for a in args[:2] if isinstance(a, str))  # put_file: local, remote
            return self._policy.call(f"{name}{where}", lambda: attr(*args, **kwargs))

        return retried

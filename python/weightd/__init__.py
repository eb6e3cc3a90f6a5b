"""weightd from Python: a worker's connection to a weightd parameter server.

The native part binds the C++ ``weightd::Client``, so retries, re-joins,
exactly-once pushes, heartbeats, shards and 16-bit wire formats behave as in
C++. Tensors are your own numpy arrays (float32, C-contiguous, writeable),
read and written in place::

    import numpy as np, weightd
    w = np.zeros((784, 128), np.float32)
    with weightd.Client("127.0.0.1:7070", worker_id="cnn-0") as ps:
        ps.join({"enc/w": w})            # creates, or pulls the shared value
        ps.push_pull({"enc/w": w}, weight=n_samples)   # averaged in place

Errors raise ``weightd.Error`` subclasses named after the gRPC code
(``weightd.Aborted``, ``weightd.Unavailable``, ...), carrying ``code`` and
the server's message. Ctrl-C during a call ends it promptly with
``KeyboardInterrupt``; the client is then closed.
"""

from __future__ import annotations

import typing

__all__ = [
    "Client", "Error", "Cancelled", "Unknown", "InvalidArgument",
    "DeadlineExceeded", "NotFound", "AlreadyExists", "PermissionDenied",
    "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
]


class Error(Exception):
    """A weightd call failed. ``code`` is the gRPC status code (an int),
    ``name`` its name (e.g. "ABORTED"), ``message`` the reason."""

    code = 2
    name = "UNKNOWN"

    def __init__(self, message: str):
        super().__init__(f"{self.name}: {message}")
        self.message = message


def _subclass(class_name: str, code: int, name: str) -> type:
    return type(class_name, (Error,), {"code": code, "name": name,
                                       "__doc__": f"gRPC status {name}."})


Cancelled = _subclass("Cancelled", 1, "CANCELLED")
Unknown = _subclass("Unknown", 2, "UNKNOWN")
InvalidArgument = _subclass("InvalidArgument", 3, "INVALID_ARGUMENT")
DeadlineExceeded = _subclass("DeadlineExceeded", 4, "DEADLINE_EXCEEDED")
NotFound = _subclass("NotFound", 5, "NOT_FOUND")
AlreadyExists = _subclass("AlreadyExists", 6, "ALREADY_EXISTS")
PermissionDenied = _subclass("PermissionDenied", 7, "PERMISSION_DENIED")
ResourceExhausted = _subclass("ResourceExhausted", 8, "RESOURCE_EXHAUSTED")
FailedPrecondition = _subclass("FailedPrecondition", 9, "FAILED_PRECONDITION")
Aborted = _subclass("Aborted", 10, "ABORTED")
OutOfRange = _subclass("OutOfRange", 11, "OUT_OF_RANGE")
Unimplemented = _subclass("Unimplemented", 12, "UNIMPLEMENTED")
Internal = _subclass("Internal", 13, "INTERNAL")
Unavailable = _subclass("Unavailable", 14, "UNAVAILABLE")
DataLoss = _subclass("DataLoss", 15, "DATA_LOSS")
Unauthenticated = _subclass("Unauthenticated", 16, "UNAUTHENTICATED")

_BY_CODE = {cls.code: cls for cls in (
    Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound,
    AlreadyExists, PermissionDenied, ResourceExhausted, FailedPrecondition,
    Aborted, OutOfRange, Unimplemented, Internal, Unavailable, DataLoss,
    Unauthenticated)}


def _error_for(code: int, message: str) -> Error:
    """The exception for a status (called by the native module)."""
    return _BY_CODE.get(code, Unknown)(message)


from . import _weightd  # noqa: E402  (needs _error_for defined first)

Tensors = typing.Mapping[str, typing.Any]


class Client:
    """A worker's connection to weightd (one server, or every shard).

    ``address``: one gRPC target ("host:7070", "unix:/path"), every shard's
    as a comma list, or one DNS name resolving to all shards. The keyword
    arguments are ``weightd::ClientOptions`` with the same defaults:
    ``call_timeout`` (s, each call including the wait for a round),
    ``connect_timeout`` (s), ``heartbeat``, ``retry_budget`` (s),
    ``wire_format`` ("float32", "bfloat16", "float16") and ``split_bytes``.
    Raises ``Unavailable`` if the server cannot be reached in time.
    Not thread-safe: use one client per thread.
    """

    def __init__(self, address: str, worker_id: str, *,
                 call_timeout: float = 600.0, connect_timeout: float = 30.0,
                 heartbeat: bool = True, retry_budget: float = 120.0,
                 wire_format: str = "float32", split_bytes: int = 4 << 20):
        self._native = _weightd.Client(
            address, worker_id, call_timeout, connect_timeout, heartbeat,
            retry_budget, wire_format, split_bytes)

    def join(self, tensors: Tensors) -> None:
        """Declares the tensors your model shares (name -> array). A tensor
        the server lacks is created from your array; for one it holds, the
        shared value is written into your array (weight transfer)."""
        self._native.join(dict(tensors))

    def push(self, tensors: Tensors, weight: float = 1.0,
             kind: str = "weights") -> None:
        """Contributes your arrays to the open round; does not wait for it.
        ``kind``: "weights" (averaged) or "delta" (applied with the server's
        learning rate)."""
        self._native.push(dict(tensors), weight, kind)

    def pull(self, tensors: Tensors) -> None:
        """Writes the shared values into your arrays (after a push: once its
        round closed)."""
        self._native.pull(dict(tensors))

    def push_pull(self, tensors: Tensors, weight: float = 1.0,
                  kind: str = "weights") -> None:
        """Push, wait for the round, and write the result into your arrays.
        If the round moved on without you, your arrays get the current
        shared value and the call still returns."""
        self._native.push_pull(dict(tensors), weight, kind)

    def barrier(self, name: str, count: int, timeout: float = 0.0) -> int:
        """Waits until ``count`` workers entered barrier ``name`` (workers
        beyond ``count`` pass at once) and returns this worker's arrival
        order. ``timeout`` in seconds; 0: only ``call_timeout``."""
        return self._native.barrier(name, count, timeout)

    def leave(self) -> None:
        """Ends the membership; the server stops waiting for this worker."""
        self._native.leave()

    def version(self, name: str) -> int:
        """Version of the value of ``name`` you last received or created."""
        return self._native.version(name)

    def status(self) -> dict:
        """Server-wide counters (bytes, rounds closed)."""
        return self._native.status()

    def stats(self) -> dict:
        """This client's counters (bytes pushed and pulled, rounds missed)."""
        return self._native.stats()

    def close(self) -> None:
        """Ends every wait of this client; it cannot be used afterwards."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.closed

    @property
    def worker_id(self) -> str:
        return self._native.worker_id

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        if not self.closed:
            try:
                self.leave()
            except Error:
                pass  # The server drops the worker when its lease expires.
        self.close()

"""weightd from Python: a worker's connection to a weightd parameter server.

The native part binds the C++ ``weightd::Client``, so retries, re-joins,
exactly-once pushes, heartbeats, shards and 16-bit wire formats behave as in
C++. Tensors are your own numpy arrays (float32, C-contiguous, writeable) or
torch tensors (CPU, float32, contiguous), read and written in place::

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

import os
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


def _torch_array(name: str, tensor) -> typing.Any:
    """A numpy view of a torch tensor's own storage (no copy), after the
    checks the native part makes of numpy arrays."""
    import torch  # Only reached for a torch tensor: torch is loaded.

    if tensor.layout != torch.strided:
        raise ValueError(f"tensor {name}: layout is {tensor.layout}; weightd "
                         "reads and writes dense (strided) tensors")
    if tensor.device.type != "cpu":
        raise ValueError(f"tensor {name}: on device {tensor.device}; weightd "
                         "reads and writes CPU tensors (move the model with "
                         ".cpu() first)")
    if tensor.dtype != torch.float32:
        raise TypeError(f"tensor {name}: dtype is {tensor.dtype}; weightd "
                        "holds float32")
    if not tensor.is_contiguous():
        raise ValueError(f"tensor {name}: not contiguous (use .contiguous() "
                         "and keep that tensor)")
    # detach(): the same storage, outside autograd (as param.data is).
    return tensor.detach().numpy()


def _arrays(tensors: Tensors) -> dict:
    """name -> numpy array for the native part: numpy arrays as they are,
    torch tensors as views of their storage."""
    if not isinstance(tensors, typing.Mapping):
        raise TypeError("tensors: expected a dict of name -> array, got "
                        f"{type(tensors).__name__}")
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor name {name!r}: expected a str")
        if type(value).__module__.startswith("torch"):
            value = _torch_array(name, value)
        arrays[name] = value
    return arrays


class Client:
    """A worker's connection to weightd (one server, or every shard).

    ``address``: one gRPC target ("host:7070", "unix:/path"), every shard's
    as a comma list, or one DNS name resolving to all shards. ``worker_id``:
    a stable name ([A-Za-z0-9_.:/-]); one process at a time may hold it.

    The keyword arguments are ``weightd::ClientOptions`` (client/types.h)
    with the same defaults; durations are in seconds:

    - ``call_timeout``: deadline of each call, including the wait for a round.
    - ``connect_timeout``: how long to wait for the server to be reachable.
    - ``heartbeat``: renew the lease from a background thread while joined.
    - ``retry_budget``: how long a call failing with UNAVAILABLE or
      DEADLINE_EXCEEDED is retried (a resent push is applied once);
      ``initial_backoff`` and ``max_backoff`` bound the pause between tries.
    - ``wire_format``: "float32", "bfloat16" or "float16" on the wire (the
      server averages in float32).
    - ``split_bytes``: sharded servers split tensors larger than this by rows.
    - ``log``: where the client says what it waits for (server not up yet,
      retries, a round taking longer than ``progress_interval``, a server
      rolled back to an older snapshot): None for standard error, or a
      callable taking one line (e.g. ``logging.getLogger("weightd").info``).
    - ``held_id_wait``: how long a join refused because another process
      holds ``worker_id`` is retried (for your own previous process's lease
      to lapse).
    - ``shared_memory``: on the daemon's host, move values through a
      shared-memory segment instead of the gRPC stream (chosen at join when
      the daemon can map it, else the stream; the client logs which).
    - ``tls_ca``: PEM bundle of the CA(s) that signed the servers'
      certificates: connect with TLS (default: ``$WEIGHTD_TLS_CA``, else
      plaintext). ``tls_cert`` and ``tls_key``: this worker's certificate
      and key, for servers that require client certificates (default:
      ``$WEIGHTD_TLS_CERT``, ``$WEIGHTD_TLS_KEY``). ``tls_server_name``: the
      name the servers' certificates must carry if not the host dialled
      (default: ``$WEIGHTD_TLS_SERVER_NAME``). ``token``: a bearer token
      sent with every call, for servers whose policy names principals by
      token (default: the contents of the file ``$WEIGHTD_TOKEN_FILE``).
      See docs/security.md.

    Raises ``Unavailable`` if the server cannot be reached in time,
    ``ValueError`` for an option that cannot work. One client per thread:
    its calls are not meant to be made from two threads at once.
    """

    def __init__(self, address: str, worker_id: str, *,
                 call_timeout: float = 600.0, connect_timeout: float = 30.0,
                 heartbeat: bool = True, retry_budget: float = 120.0,
                 initial_backoff: float = 0.05, max_backoff: float = 2.0,
                 wire_format: str = "float32", split_bytes: int = 256 << 10,
                 log: typing.Optional[typing.Callable[[str], None]] = None,
                 progress_interval: float = 10.0,
                 held_id_wait: float = 20.0, shared_memory: bool = True,
                 tls_ca: typing.Optional[str] = None,
                 tls_cert: typing.Optional[str] = None,
                 tls_key: typing.Optional[str] = None,
                 tls_server_name: typing.Optional[str] = None,
                 token: typing.Optional[str] = None):
        def env(value, name):
            return os.environ.get(name, "") if value is None else value

        if token is None and os.environ.get("WEIGHTD_TOKEN_FILE"):
            with open(os.environ["WEIGHTD_TOKEN_FILE"]) as f:
                token = f.read().strip()

        self._native = _weightd.Client(
            address, worker_id, call_timeout, connect_timeout, heartbeat,
            retry_budget, initial_backoff, max_backoff, wire_format,
            split_bytes, log, progress_interval, held_id_wait, shared_memory,
            env(tls_ca, "WEIGHTD_TLS_CA"), env(tls_cert, "WEIGHTD_TLS_CERT"),
            env(tls_key, "WEIGHTD_TLS_KEY"),
            env(tls_server_name, "WEIGHTD_TLS_SERVER_NAME"), token or "")

    def join(self, tensors: Tensors,
             policy: typing.Union[None, str, typing.Mapping[str, str]] = None
             ) -> None:
        """Declares the tensors your model shares (name -> numpy array or
        torch tensor). A tensor the server lacks is created from your
        array; for one it holds, the shared value is written into your
        array (weight transfer).

        ``policy``: how the server combines the tensors' pushes
        (docs/algorithms.md), as text, e.g. ``"optimizer=adam lr=0.01"`` or
        ``"consistency=bounded staleness=2"``: one for every tensor, or a
        dict of tensor name -> text (tensors it leaves out name none). A
        field it leaves out is the tensor's, or the server's default; a
        field it names must match a tensor that exists (else
        ``weightd.AlreadyExists``)."""
        arrays = _arrays(tensors)
        if policy is None:
            policies = {}
        elif isinstance(policy, str):
            policies = {name: policy for name in arrays}
        elif isinstance(policy, typing.Mapping):
            unknown = sorted(set(policy) - set(arrays))
            if unknown:
                raise ValueError(f"policy names tensors not joined: {unknown}")
            if not all(isinstance(text, str) for text in policy.values()):
                raise TypeError("policy: every value must be a str")
            policies = dict(policy)
        else:
            raise TypeError("policy: expected None, a str, or a dict of "
                            f"name -> str, got {type(policy).__name__}")
        self._native.join(arrays, policies)

    def push(self, tensors: Tensors, weight: float = 1.0,
             kind: str = "weights") -> None:
        """Contributes your arrays to the open round; does not wait for it.
        ``kind``: "weights" (averaged) or "delta" (applied with the server's
        learning rate)."""
        self._native.push(_arrays(tensors), weight, kind)

    def pull(self, tensors: Tensors) -> None:
        """Writes the shared values into your arrays (after a push: once its
        round closed)."""
        self._native.pull(_arrays(tensors))

    def push_pull(self, tensors: Tensors, weight: float = 1.0,
                  kind: str = "weights") -> None:
        """Push, wait for the round, and write the result into your arrays.
        If the round moved on without you, your arrays get the current
        shared value and the call still returns."""
        self._native.push_pull(_arrays(tensors), weight, kind)

    def shared_array(self, name: str) -> np.ndarray:
        """A float32 array (the tensor's shape) over ``name``'s place in this
        worker's shared-memory segment, after ``join``. Keep the tensor's
        values there (copy them in first; e.g. ``param.data =
        torch.from_numpy(arr)``) and pass it to ``push_pull``: no byte of
        it is then copied in this process. Raises ``FailedPrecondition``
        when there is none (the stream path, a 16-bit wire format, a tensor
        split over shards). The array stays valid after ``close``."""
        return self._native.shared_array(name)

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
        """This client's counters (bytes pushed and pulled, rounds missed, retries)."""
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

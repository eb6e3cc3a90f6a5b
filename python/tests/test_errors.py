"""Every failure raises the weightd.Error subclass of its gRPC code, carrying
the code and the message of whoever refused the call: the server (the
message starts with the call's name: "Push: ...") or the C++ client before
sending anything (docs/errors.md lists both)."""

import re
import socket
import threading

import numpy as np
import pytest

import weightd


def zeros(n=3):
    return np.zeros(n, np.float32)


def check(info, cls, code, message):
    """`message`: a regex the whole message must match."""
    error = info.value
    assert type(error) is cls
    assert isinstance(error, weightd.Error)
    assert error.code == code and cls.code == code
    assert re.fullmatch(message, error.message), error.message
    assert str(error) == f"{cls.name}: {error.message}"


def test_bad_worker_id_is_invalid_argument(server):
    with pytest.raises(weightd.InvalidArgument) as info:
        weightd.Client(server, worker_id="bad id!")
    check(info, weightd.InvalidArgument, 3,
          re.escape('worker id "bad id!" contains a character outside '
                    '[A-Za-z0-9_.:/-]'))


@pytest.mark.parametrize("weight, shown", [
    (0.0, "0"), (-1.0, "-1"), (float("nan"), "nan"), (1e16, "1e\\+16")])
def test_weight_out_of_range_is_invalid_argument(server, weight, shown):
    with weightd.Client(server, worker_id="w") as c:
        c.join({"w": zeros()})
        with pytest.raises(weightd.InvalidArgument) as info:
            c.push({"w": zeros()}, weight=weight)
        check(info, weightd.InvalidArgument, 3,
              f"Push: push weight is {shown}; it must be in "
              r"\[1e-06, 1e\+15\]")
        # The refused push left no contribution: a valid one closes the
        # round of this single worker.
        c.push_pull({"w": np.ones(3, np.float32)}, weight=1.0)
        assert c.version("w") == 1


def test_undeclared_tensor_is_not_found(server):
    with weightd.Client(server, worker_id="n") as c:
        with pytest.raises(weightd.NotFound) as info:
            c.push({"w": zeros()})  # Before any Join.
        check(info, weightd.NotFound, 5, "tensor w was not declared in Join")
        c.join({"w": zeros()})
        with pytest.raises(weightd.NotFound) as info:
            c.pull({"other": zeros()})
        check(info, weightd.NotFound, 5,
              "tensor other was not declared in Join")
        with pytest.raises(weightd.NotFound) as info:
            c.version("other")
        check(info, weightd.NotFound, 5,
              "tensor other was not declared in Join")


def test_shape_mismatch_and_second_contribution_are_already_exists(server):
    with weightd.Client(server, worker_id="d") as c, \
            weightd.Client(server, worker_id="e") as other:
        c.join({"w": zeros(3)})
        with pytest.raises(weightd.AlreadyExists) as info:
            other.join({"w": zeros(4)})
        check(info, weightd.AlreadyExists, 6,
              re.escape("Join: tensor w already exists with shape [3]; "
                        "worker e declared [4]"))
        other.join({"w": zeros(3)})
        c.push({"w": zeros()})
        with pytest.raises(weightd.AlreadyExists) as info:
            c.push({"w": zeros()})  # The round still waits for `other`.
        check(info, weightd.AlreadyExists, 6,
              r"Push: worker d already contributed to round 0 of tensor w "
              r"\(push sequence \d+\)")


def test_barrier_before_join_is_failed_precondition(server):
    with weightd.Client(server, worker_id="f") as c:
        with pytest.raises(weightd.FailedPrecondition) as info:
            c.barrier("start", 1)
        check(info, weightd.FailedPrecondition, 9,
              "Barrier: lease 0 is not held by any joined worker; "
              "call Join first")


def test_mixed_update_kinds_are_failed_precondition(server):
    with weightd.Client(server, worker_id="g") as c, \
            weightd.Client(server, worker_id="h") as other:
        c.join({"w": zeros()})
        other.join({"w": zeros()})
        c.push({"w": zeros()}, kind="weights")
        with pytest.raises(weightd.FailedPrecondition) as info:
            other.push({"w": zeros()}, kind="delta")
        check(info, weightd.FailedPrecondition, 9,
              "Push: tensor w is collecting weights updates in its open "
              "round; this push is delta")


def test_expired_lease_is_failed_precondition(daemon):
    address, _ = daemon(lease_timeout="1s")
    with weightd.Client(address, worker_id="silent", heartbeat=False) as a, \
            weightd.Client(address, worker_id="busy") as b:
        a.join({"w": zeros()})
        b.join({"w": zeros()})
        # The round closes once the silent worker's lease expired (~1 s):
        # the wait is for that condition, not a sleep.
        b.push_pull({"w": np.ones(3, np.float32)})
        assert b.version("w") == 1
        with pytest.raises(weightd.FailedPrecondition) as info:
            a.barrier("after", 1)
        check(info, weightd.FailedPrecondition, 9,
              r"Barrier: lease \d+ is not held by any joined worker; "
              r"call Join first")
        # A push_pull re-joins by itself; the round moved on: it gets the
        # current value and counts a missed round.
        w = np.full(3, 5.0, np.float32)
        a.push_pull({"w": w})
        np.testing.assert_array_equal(w, [1, 1, 1])
        assert a.stats()["rounds_missed"] == 1


def test_id_held_by_a_live_client_is_aborted(server):
    with weightd.Client(server, worker_id="dup") as first:
        first.join({"w": zeros()})
        second = weightd.Client(server, worker_id="dup", held_id_wait=0)
        with pytest.raises(weightd.Aborted) as info:
            second.join({"w": zeros()})
        second.close()
        check(info, weightd.Aborted, 10,
              r"Join: worker id dup is held by another live process "
              r"\(ipv4:127\.0\.0\.1:\d+, last call .* ago\); give every "
              r"worker its own id \(weightd_worker: --worker_id or --rank\)\. "
              r"If that process is gone, its lease expires within .* and a "
              r"Join then succeeds")
        first.push_pull({"w": np.ones(3, np.float32)})  # Still the member.
        assert first.version("w") == 1


def test_no_server_is_unavailable():
    # A bound port that does not listen: connections are refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(weightd.Unavailable) as info:
            weightd.Client(f"127.0.0.1:{port}", worker_id="u",
                           connect_timeout=0.3)
    # gRPC's reason, if the client learned it within the timeout.
    check(info, weightd.Unavailable, 14,
          re.escape(f"cannot reach weightd at 127.0.0.1:{port} within 300ms "
                    "(--connect_timeout): ") +
          r"(not reachable yet|.*Connection refused)" +
          re.escape("; is it running, and is its port open?"))


def test_round_outlasting_call_timeout_is_deadline_exceeded(server):
    with weightd.Client(server, worker_id="quick", call_timeout=0.5,
                        retry_budget=0) as c, \
            weightd.Client(server, worker_id="absent") as other:
        c.join({"w": zeros()})
        other.join({"w": zeros()})  # Never pushes: the round waits.
        with pytest.raises(weightd.DeadlineExceeded) as info:
            c.push_pull({"w": zeros()})
        check(info, weightd.DeadlineExceeded, 4,
              re.escape(f"could not reach weightd at {server} for ")
              + r"\d+ms " + re.escape("(1 attempts, the client's retry "
                                       "budget); last error: PushPull: "
                                       "Deadline Exceeded"))
        with pytest.raises(weightd.DeadlineExceeded) as info:
            c.barrier("both", 2)
        check(info, weightd.DeadlineExceeded, 4,
              r"Barrier: only [01] of 2 workers entered barrier both on "
              + re.escape(server) + r" within 500ms; are the others running, "
              r"each with an id of its own\?")


def test_closed_client_is_cancelled(server):
    c = weightd.Client(server, worker_id="closed")
    c.join({"w": zeros()})
    c.close()
    assert c.closed
    for call in (lambda: c.pull({"w": zeros()}), c.status, c.leave,
                 lambda: c.push_pull({"w": zeros()})):
        with pytest.raises(weightd.Cancelled) as info:
            call()
        check(info, weightd.Cancelled, 1,
              re.escape("this client was closed (after Ctrl-C, or by "
                        "close()); make a new one"))


def test_close_from_another_thread_cancels_a_wait(server):
    counted = threading.Event()  # The server counted c's push: c waits.

    def log(line):
        if "1 of 2 workers have pushed" in line:
            counted.set()

    with weightd.Client(server, worker_id="waits", log=log,
                        progress_interval=0.1) as c, \
            weightd.Client(server, worker_id="absent") as other:
        c.join({"w": zeros()})
        other.join({"w": zeros()})
        closer = threading.Thread(
            target=lambda: (counted.wait(timeout=10), c.close()))
        closer.start()
        with pytest.raises(weightd.Cancelled) as info:
            c.push_pull({"w": zeros()})
        closer.join(timeout=10)
        assert counted.is_set(), "no progress line said the push was counted"
        check(info, weightd.Cancelled, 1, "PushPull: cancelled by the caller")

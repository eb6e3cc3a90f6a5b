"""A tensor of the wrong dtype, device, layout or size fails before anything
is sent, and changes nothing on the server.

"Before anything is sent" is shown by stopping the daemon (SIGSTOP) while
the bad calls are made: a call that reached the network would wait for
the stopped daemon and end in DeadlineExceeded, not in the TypeError or
ValueError expected. "Changes nothing" by the server's byte and round
counters and a pulled value, compared before and after."""

import contextlib
import signal

import numpy as np
import pytest
import torch

import weightd

VALUE = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


@contextlib.contextmanager
def stopped(proc):
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def bad_numpy():
    return [
        ("float64", np.zeros(6), TypeError,
         "tensor w: dtype is float64; weightd holds float32"),
        ("int32", np.zeros(6, np.int32), TypeError,
         "tensor w: dtype is int32; weightd holds float32"),
        ("strided", np.zeros(12, np.float32)[::2], ValueError,
         "tensor w: not C-contiguous"),
        ("fortran", np.zeros((2, 3), np.float32, order="F"), ValueError,
         "tensor w: not C-contiguous"),
        ("read-only", np.frombuffer(bytes(24), np.float32), ValueError,
         "tensor w: read-only; weightd writes into it"),
        ("list", [0.0] * 6, TypeError,
         "tensor w: expected a numpy array or torch tensor, got "
         "<class 'list'>"),
        ("wrong size", np.zeros(7, np.float32), weightd.InvalidArgument,
         "buffer of tensor w holds 7 floats; its shape needs 6"),
    ]


def bad_torch():
    return [
        ("float64", torch.zeros(6, dtype=torch.float64), TypeError,
         "tensor w: dtype is torch.float64; weightd holds float32"),
        ("float16", torch.zeros(6, dtype=torch.float16), TypeError,
         "tensor w: dtype is torch.float16; weightd holds float32"),
        ("meta", torch.zeros(6, device="meta"), ValueError,
         "tensor w: on device meta; weightd reads and writes CPU tensors"),
        ("transposed", torch.zeros(3, 2).t(), ValueError,
         "tensor w: not contiguous"),
        ("strided", torch.zeros(12)[::2], ValueError,
         "tensor w: not contiguous"),
        ("sparse", torch.zeros(6).to_sparse(), ValueError,
         "tensor w: layout is torch.sparse_coo"),
        ("wrong size", torch.zeros(5), weightd.InvalidArgument,
         "buffer of tensor w holds 5 floats; its shape needs 6"),
    ]


@pytest.mark.parametrize("kind, tensor, error, message",
                         bad_numpy() + bad_torch(),
                         ids=[f"numpy-{c[0]}" for c in bad_numpy()] +
                             [f"torch-{c[0]}" for c in bad_torch()])
def test_bad_tensor_fails_before_sending_and_changes_nothing(
        daemon, kind, tensor, error, message):
    # Long leases: the stopped daemon must not expire anyone meanwhile.
    address, proc = daemon(lease_timeout="60s")
    good = np.array(VALUE, np.float32)
    with weightd.Client(address, worker_id="a", call_timeout=3,
                        retry_budget=0) as c:
        c.join({"w": good})
        before = c.status()
        pushed = c.stats()["bytes_pushed"]
        calls = [("push", lambda: c.push({"w": tensor})),
                 ("push_pull", lambda: c.push_pull({"w": tensor})),
                 ("pull", lambda: c.pull({"w": tensor}))]
        if error is not weightd.InvalidArgument:
            # (A wrong size is the server's business at Join: below.)
            calls.append(("join", lambda: c.join({"w": tensor})))
        with stopped(proc):
            for name, call in calls:
                with pytest.raises(error) as info:
                    call()
                assert str(info.value).startswith(message) or \
                    getattr(info.value, "message", "").startswith(message), \
                    f"{name}: {info.value}"
        assert c.stats()["bytes_pushed"] == pushed
        assert c.status() == before
        pulled = np.zeros(6, np.float32)
        c.pull({"w": pulled})
        np.testing.assert_array_equal(pulled, VALUE)
        # Still a member in good standing: a round of one closes.
        c.push_pull({"w": good})
        assert c.version("w") == 1


def test_join_with_another_shape_changes_nothing(server):
    with weightd.Client(server, worker_id="a") as a, \
            weightd.Client(server, worker_id="b") as b:
        a.join({"w": np.array(VALUE, np.float32)})
        before = a.status()
        for shape in ((7,), (2, 3)):
            with pytest.raises(weightd.AlreadyExists):
                b.join({"w": torch.zeros(shape)})
        after = a.status()
        # (bytes_received may count the refused initial values.)
        assert after["rounds_closed"] == before["rounds_closed"]
        assert after["bytes_sent"] == before["bytes_sent"]
        pulled = np.zeros(6, np.float32)
        a.pull({"w": pulled})
        np.testing.assert_array_equal(pulled, VALUE)
        # b was not admitted: a's round of one closes without it.
        a.push_pull({"w": np.ones(6, np.float32)})
        assert a.version("w") == 1

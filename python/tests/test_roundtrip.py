"""numpy arrays and torch tensors are read and written in place: their data
pointers never change, and after each call they hold the server's values.
The weighted mean is exact on small inputs (every product and sum below is
exact in float32)."""

import threading

import numpy as np
import pytest
import torch

import weightd


def both(call_a, call_b, timeout=30):
    """Runs call_a on a thread and call_b here (two workers of one round)."""
    errors = []

    def run():
        try:
            call_a()
        except BaseException as e:  # Reported below, in the test's thread.
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    call_b()
    t.join(timeout=timeout)
    assert not t.is_alive(), f"the other call did not end within {timeout} s"
    if errors:
        raise errors[0]


A0 = [[1.0, 2.0, 3.0], [-8.0, 0.5, 100.0]]
B1 = [[4.0, 5.0, 6.0], [0.0, 2.5, -4.0]]
# (1 * A0 + 3 * B1) / 4: not the unweighted mean (e.g. 2.5 for the first).
MEAN = [[3.25, 4.25, 5.25], [-2.0, 2.0, 22.0]]


def test_numpy_arrays_are_written_in_place(server):
    a = np.array(A0, np.float32)
    b = np.full((2, 3), 7.0, np.float32)
    ptr_a, ptr_b = a.ctypes.data, b.ctypes.data
    with weightd.Client(server, worker_id="a") as ca, \
            weightd.Client(server, worker_id="b") as cb:
        ca.join({"w": a})  # Creates w from a.
        np.testing.assert_array_equal(a, A0)
        cb.join({"w": b})  # Weight transfer: b gets the server's value.
        np.testing.assert_array_equal(b, A0)
        assert cb.version("w") == 0

        b[:] = 0.0  # Pull overwrites local changes with the server's value.
        cb.pull({"w": b})
        np.testing.assert_array_equal(b, A0)

        b[:] = B1
        both(lambda: ca.push_pull({"w": a}, weight=1.0),
             lambda: cb.push_pull({"w": b}, weight=3.0))
        np.testing.assert_array_equal(a, MEAN)
        np.testing.assert_array_equal(b, MEAN)
        assert ca.version("w") == cb.version("w") == 1

        # push, then pull: the pull waits for the round of the push.
        a[:] = 1.0
        b[:] = 2.0
        both(lambda: ca.push({"w": a}, weight=2.0),
             lambda: cb.push({"w": b}, weight=2.0))
        a[:] = b[:] = -1.0
        ca.pull({"w": a})
        cb.pull({"w": b})
        np.testing.assert_array_equal(a, np.full((2, 3), 1.5))
        np.testing.assert_array_equal(b, np.full((2, 3), 1.5))
        assert ca.version("w") == 2
        assert (a.ctypes.data, b.ctypes.data) == (ptr_a, ptr_b)


def test_torch_tensors_are_written_in_place(server):
    model = torch.nn.Linear(3, 2, bias=False)  # weight: a (2, 3) Parameter.
    with torch.no_grad():
        model.weight.copy_(torch.tensor(A0))
    t = torch.full((2, 3), 7.0)
    w = model.weight.data
    ptr_t, ptr_w = t.data_ptr(), w.data_ptr()
    with weightd.Client(server, worker_id="a") as ca, \
            weightd.Client(server, worker_id="b") as cb:
        ca.join({"w": w})
        cb.join({"w": t})
        assert torch.equal(t, torch.tensor(A0))
        t.zero_()
        cb.pull({"w": t})
        assert torch.equal(t, torch.tensor(A0))

        t.copy_(torch.tensor(B1))
        both(lambda: ca.push_pull({"w": w}, weight=1.0),
             lambda: cb.push_pull({"w": t}, weight=3.0))
        assert torch.equal(t, torch.tensor(MEAN))
        # The module's own parameter holds the mean: its storage was written.
        assert torch.equal(model.weight.detach(), torch.tensor(MEAN))
        assert (t.data_ptr(), w.data_ptr()) == (ptr_t, ptr_w)
        assert model.weight.data_ptr() == ptr_w


def test_numpy_and_torch_workers_share_one_tensor(server):
    a = np.array([2.0, 4.0], np.float32)
    t = torch.tensor([6.0, 8.0])
    with weightd.Client(server, worker_id="np") as ca, \
            weightd.Client(server, worker_id="pt") as cb:
        ca.join({"v": a})
        cb.join({"v": t})
        t.copy_(torch.tensor([6.0, 8.0]))
        both(lambda: ca.push_pull({"v": a}, weight=1.0),
             lambda: cb.push_pull({"v": t}, weight=1.0))
        np.testing.assert_array_equal(a, [4.0, 6.0])
        assert t.tolist() == [4.0, 6.0]


@pytest.mark.parametrize("weights, expected", [
    ((1.0, 1.0, 2.0), [2.75, -0.5]),    # (1 + 2 + 2*4) / 4, (-1 + 1 - 2) / 4
    ((0.5, 0.25, 0.25), [2.0, -0.5]),   # (0.5 + 0.5 + 1) / 1, ...
])
def test_weighted_mean_of_three_is_exact(server, weights, expected):
    values = ([1.0, -1.0], [2.0, 1.0], [4.0, -1.0])
    arrays = [np.array(v, np.float32) for v in values]
    clients = [weightd.Client(server, worker_id=f"m{i}") for i in range(3)]
    try:
        for c, a in zip(clients, arrays):
            c.join({"m": a})
        for a, v in zip(arrays, values):
            a[:] = v  # Join wrote the first worker's value into the others.
        threads = [threading.Thread(target=c.push_pull, args=({"m": a}, w))
                   for c, a, w in zip(clients[1:], arrays[1:], weights[1:])]
        for t in threads:
            t.start()
        clients[0].push_pull({"m": arrays[0]}, weight=weights[0])
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive()
        for a in arrays:
            np.testing.assert_array_equal(a, expected)
    finally:
        for c in clients:
            c.close()


def test_shared_arrays_live_in_the_segment_and_outlive_the_client(server):
    """On the daemon's host, shared_array gives a tensor's place in the
    worker's shared-memory segment: push_pull of it copies nothing in the
    process, and the daemon writes the result there."""
    a = np.array(A0, np.float32)
    b = np.array(A0, np.float32)
    with weightd.Client(server, worker_id="a") as ca, \
            weightd.Client(server, worker_id="b") as cb:
        ca.join({"w": a})
        cb.join({"w": b})
        sa, sb = ca.shared_array("w"), cb.shared_array("w")
        assert sa.shape == (2, 3) and sa.dtype == np.float32
        sa[:] = A0
        sb[:] = B1
        ptr = sa.ctypes.data
        both(lambda: ca.push_pull({"w": sa}, weight=1.0),
             lambda: cb.push_pull({"w": sb}, weight=3.0))
        np.testing.assert_array_equal(sa, MEAN)
        np.testing.assert_array_equal(sb, MEAN)
        assert sa.ctypes.data == ptr
        np.testing.assert_array_equal(a, A0)  # Its own buffer: untouched.
        with pytest.raises(weightd.NotFound):
            ca.shared_array("nope")
    sa[:] = 1.0  # Still mapped after close.
    np.testing.assert_array_equal(sa, np.ones((2, 3), np.float32))


def test_no_shared_array_on_the_stream_path(server):
    a = np.array(A0, np.float32)
    with weightd.Client(server, worker_id="a", shared_memory=False) as ca:
        ca.join({"w": a})
        with pytest.raises(weightd.FailedPrecondition, match="stream path"):
            ca.shared_array("w")

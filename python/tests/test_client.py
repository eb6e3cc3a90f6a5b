"""The weightd Python package against a real daemon on 127.0.0.1.

Run: PYTEST_WEIGHTD_BUILD=build/python PYTHONPATH=build/python/python \
     /usr/bin/python3 -m pytest python/tests
(PYTEST_WEIGHTD_BUILD: a build tree with the daemon and the package's native part.)
"""

import os
import pathlib
import signal
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest

import weightd

BUILD = pathlib.Path(os.environ.get("PYTEST_WEIGHTD_BUILD", "build/python"))


@pytest.fixture
def server():
    """A weightd on 127.0.0.1:0; yields its address."""
    with tempfile.TemporaryDirectory() as work:
        ready = pathlib.Path(work, "ready")
        # No preexec_fn: a forked gRPC process can hang (shared/FACTS.md).
        proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", str(BUILD / "server/weightd"),
             "--listen=127.0.0.1:0", f"--ready_file={ready}",
             "--lease_timeout=3s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, "weightd exited at start"
            time.sleep(0.05)
        assert ready.exists(), "weightd did not start within 10 s"
        yield ready.read_text().strip()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_push_pull_averages_in_place(server):
    a = np.array([1.0, 2.0, 3.0], np.float32)
    b = np.array([5.0, 6.0, 7.0], np.float32)
    pointers = (a.ctypes.data, b.ctypes.data)
    with weightd.Client(server, worker_id="a") as ca, \
            weightd.Client(server, worker_id="b") as cb:
        ca.join({"w": a})
        cb.join({"w": b})  # Weight transfer: b now holds a's value.
        np.testing.assert_array_equal(b, [1, 2, 3])
        b[:] = [4.0, 5.0, 6.0]
        # Weighted mean, 1:3: (1*[1,2,3] + 3*[4,5,6]) / 4.
        t = threading.Thread(target=ca.push_pull, args=({"w": a},),
                             kwargs={"weight": 1.0})
        t.start()
        cb.push_pull({"w": b}, weight=3.0)
        t.join(timeout=30)
        assert not t.is_alive()
        np.testing.assert_allclose(a, [3.25, 4.25, 5.25])
        np.testing.assert_array_equal(a, b)
        assert (a.ctypes.data, b.ctypes.data) == pointers
        assert ca.version("w") == 1


def test_bad_arrays_fail_before_anything_is_sent(server):
    with weightd.Client(server, worker_id="c") as c:
        with pytest.raises(TypeError, match="tensor w: dtype is float64"):
            c.join({"w": np.zeros(3)})
        with pytest.raises(ValueError, match="tensor w: not C-contiguous"):
            c.join({"w": np.zeros((4, 4), np.float32)[:, 1]})
        with pytest.raises(TypeError, match="tensor w: expected a numpy array"):
            c.join({"w": [1.0, 2.0]})
        assert c.status()["rounds_closed"] == 0


def test_errors_map_to_exceptions(server):
    with weightd.Client(server, worker_id="d") as c:
        c.join({"w": np.zeros(3, np.float32)})
        with pytest.raises(weightd.NotFound):
            c.version("nope")
        with weightd.Client(server, worker_id="e") as other:
            with pytest.raises(weightd.AlreadyExists) as info:
                other.join({"w": np.zeros(4, np.float32)})
            assert info.value.code == 6
            assert "already exists with shape [3]" in info.value.message


def test_gil_is_released_while_waiting(server):
    a = np.zeros(2, np.float32)
    with weightd.Client(server, worker_id="f") as ca, \
            weightd.Client(server, worker_id="g") as cb:
        ca.join({"w": a})
        cb.join({"w": np.zeros(2, np.float32)})
        count = [0]
        stop = threading.Event()

        def counter():
            while not stop.is_set():
                count[0] += 1

        counting = threading.Thread(target=counter)
        waiter = threading.Thread(target=ca.push_pull, args=({"w": a},))
        counting.start()
        waiter.start()
        time.sleep(0.2)  # ca is now waiting for cb's push.
        before = count[0]
        time.sleep(1.0)
        during = count[0] - before
        assert waiter.is_alive()  # Still waiting: the count ran meanwhile.
        cb.push_pull({"w": np.ones(2, np.float32)})
        waiter.join(timeout=30)
        stop.set()
        counting.join()
        assert not waiter.is_alive()
        assert during > 1000, f"the counter ran {during} times in 1 s"
        np.testing.assert_array_equal(a, [0.5, 0.5])


def test_ctrl_c_ends_a_wait_promptly(server):
    a = np.zeros(2, np.float32)
    c = weightd.Client(server, worker_id="h")
    other = weightd.Client(server, worker_id="i")
    c.join({"w": a})
    other.join({"w": np.zeros(2, np.float32)})  # Never pushes.
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        c.push_pull({"w": a})
    assert time.monotonic() - started < 2.0
    assert c.closed
    with pytest.raises(weightd.Cancelled):
        c.pull({"w": a})
    other.close()

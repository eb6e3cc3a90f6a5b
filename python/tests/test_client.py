"""Threads and signals inside one Python process: the GIL is released while
a call waits, and Ctrl-C ends a wait (the `server` fixture: conftest.py)."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import weightd


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

"""The keyword options of weightd.Client: `log` receives the client's
progress lines; a duration that cannot work is a ValueError, raised before
any connection is tried."""

import math
import queue
import re
import socket
import threading

import numpy as np
import pytest

import weightd


def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_log_callable_hears_the_wait_for_a_server_not_up_yet(daemon):
    port = unused_port()
    lines = queue.Queue()
    result = {}

    def connect():
        try:
            result["client"] = weightd.Client(
                f"127.0.0.1:{port}", worker_id="early", log=lines.put,
                connect_timeout=30, progress_interval=0.2)
        except BaseException as e:  # Checked in the test's thread.
            result["error"] = e

    connecting = threading.Thread(target=connect)
    connecting.start()
    try:
        line = lines.get(timeout=10)
    except queue.Empty:
        pytest.fail("no log line within 10 s while the server was not up")
    assert type(line) is str
    assert re.fullmatch(
        rf"waiting for weightd at 127\.0\.0\.1:{port} \(\d+m?s of 30s\): "
        r"(not reachable yet|.*Connection refused)", line), line
    daemon(listen=f"127.0.0.1:{port}")  # Now the server comes up.
    connecting.join(timeout=20)
    assert not connecting.is_alive(), "Client() did not return once it was up"
    assert "error" not in result, result.get("error")
    with result["client"] as c:
        a = np.ones(2, np.float32)
        c.join({"w": a})
        c.push_pull({"w": a})
        assert c.version("w") == 1


def test_log_callable_hears_a_slow_round(server):
    lines = queue.Queue()
    with weightd.Client(server, worker_id="slow", log=lines.put,
                        progress_interval=0.1) as c, \
            weightd.Client(server, worker_id="late") as other:
        c.join({"w": np.zeros(2, np.float32)})
        other.join({"w": np.zeros(2, np.float32)})
        waiting = threading.Thread(
            target=c.push_pull, args=({"w": np.zeros(2, np.float32)},))
        waiting.start()
        line = lines.get(timeout=10)  # Which data path (shared memory).
        assert "moves its tensors through shared memory" in line, line
        line = lines.get(timeout=10)
        other.push_pull({"w": np.zeros(2, np.float32)})
        waiting.join(timeout=10)
        assert not waiting.is_alive()
    assert re.fullmatch(
        r"PushPull waiting for round 0 of tensor w on 127\.0\.0\.1:\d+: "
        r"1 of 2 workers have pushed \(\d+m?s so far\)", line), line


DURATIONS = ["call_timeout", "connect_timeout", "retry_budget",
             "initial_backoff", "max_backoff", "progress_interval",
             "held_id_wait"]


@pytest.mark.parametrize("option", DURATIONS)
@pytest.mark.parametrize("value, shown", [(-1.0, "-1"), (-0.001, "-0.001"),
                                          (math.nan, "nan"),
                                          (math.inf, "inf")])
def test_a_duration_that_cannot_work_is_a_value_error(option, value, shown):
    # Nothing listens there: a connection attempt would take the 30 s of
    # connect_timeout and end in Unavailable.
    with pytest.raises(ValueError) as info:
        weightd.Client(f"127.0.0.1:{unused_port()}", worker_id="v",
                       **{option: value})
    assert str(info.value) == f"{option}={shown}: expected seconds, >= 0"


def test_other_bad_options(server):
    address = f"127.0.0.1:{unused_port()}"
    with pytest.raises(ValueError, match="wire_format=int8: use float32, "
                                         "bfloat16 or float16"):
        weightd.Client(address, worker_id="v", wire_format="int8")
    with pytest.raises(TypeError, match="log: expected None or a callable"):
        weightd.Client(address, worker_id="v", log="stderr")
    with weightd.Client(server, worker_id="k") as c:
        c.join({"w": np.zeros(2, np.float32)})
        with pytest.raises(ValueError,
                           match='kind=mean: use "weights" or "delta"'):
            c.push({"w": np.zeros(2, np.float32)}, kind="mean")


def test_negative_barrier_timeout_is_a_value_error(server):
    with weightd.Client(server, worker_id="b", call_timeout=2) as c:
        c.join({"w": np.zeros(2, np.float32)})
        with pytest.raises(ValueError):
            c.barrier("alone", 1, timeout=-1)

"""Python worker processes (real subprocesses of /usr/bin/python3) against
one daemon: sharing groups, and Ctrl-C while a call waits for a round."""

import json
import signal
import time

import numpy as np
import pytest

import weightd

GROUPS_WORKER = """
    import json, sys
    import numpy as np
    import weightd

    address, rank = sys.argv[1], int(sys.argv[2])
    values = {"ab": [[1.0, 2.0], [3.0, 4.0]], "all": [1.0, 2.0, 4.0]}
    weights = {"ab": [1.0, 3.0], "all": [1.0, 1.0, 2.0]}
    # Bounded: a round that waited for a worker not holding its tensor
    # would end in DeadlineExceeded, not hang.
    with weightd.Client(address, worker_id=f"p{rank}", call_timeout=20,
                        retry_budget=0) as c:
        tensors = {"all": np.zeros(3, np.float32)}
        if rank < 2:  # Workers 0 and 1 also hold "ab"; worker 2 does not.
            tensors["ab"] = np.zeros(2, np.float32)
        c.join(tensors)
        c.barrier("joined", 3)  # Every membership exists from here on.
        if rank < 2:
            ab = tensors["ab"]
            ab[:] = values["ab"][rank]
            c.push_pull({"ab": ab}, weight=weights["ab"][rank])
            print("ab", json.dumps({"value": ab.tolist(),
                                    "version": c.version("ab")}), flush=True)
        # Worker 2 waits here, pushing nothing, until the pair's round of
        # "ab" closed.
        c.barrier("ab-closed", 3)
        a = tensors["all"]
        a[:] = values["all"][rank]
        c.push_pull({"all": a}, weight=weights["all"][rank])
        print("all", json.dumps({"value": a.tolist(),
                                 "version": c.version("all")}), flush=True)
"""


def test_tensor_of_two_workers_closes_without_the_third(server, spawn):
    workers = [spawn(GROUPS_WORKER, server, rank) for rank in range(3)]
    for w in workers[:2]:
        # (1 * [1, 2] + 3 * [3, 4]) / 4, without worker 2.
        assert w.expect("ab ", timeout=30) == {"value": [2.5, 3.5],
                                               "version": 1}
    for w in workers:
        # (1 * 1 + 1 * 2 + 2 * 4) / 4: all three.
        assert w.expect("all ", timeout=30) == {"value": [2.75] * 3,
                                                "version": 1}
    for w in workers:
        assert w.wait(timeout=10) == 0, w.err()
    with weightd.Client(server, worker_id="check") as c:
        assert c.status()["rounds_closed"] == 2


CTRL_C_WORKER = """
    import json, sys
    import numpy as np
    import weightd

    address, catch, log = sys.argv[1], sys.argv[2] == "catch", sys.argv[3]
    def line(text):
        print("log", text, flush=True)
    # progress_interval: the client says (through `log`, or on standard
    # error) that it waits for the round, once the server counted its push.
    c = weightd.Client(address, worker_id="interrupted",
                       log=line if log == "callable" else None,
                       progress_interval=0.1)
    a = np.zeros(2, np.float32)
    c.join({"w": a})
    if not catch:
        c.push_pull({"w": a})
    try:
        c.push_pull({"w": a})
        print("returned", flush=True)
    except KeyboardInterrupt:
        print("interrupted", json.dumps({"closed": c.closed}), flush=True)
    # Exits with the client alive: the interpreter's finalization ends it.
"""


@pytest.mark.parametrize("catch, log", [("catch", "callable"),
                                        ("catch", "stderr"),
                                        ("raise", "callable")])
def test_ctrl_c_in_a_worker_process_ends_the_wait_and_the_process(
        server, spawn, catch, log):
    with weightd.Client(server, worker_id="absent") as other:
        other.join({"w": np.zeros(2, np.float32)})  # Never pushes.
        w = spawn(CTRL_C_WORKER, server, catch, log)
        # Wait until the child waits in push_pull with its push counted.
        if log == "callable":
            progress = w.expect("log PushPull", timeout=20)
        else:
            progress = w.expect("weightd client interrupted: PushPull",
                                timeout=20, stream="stderr")
        assert "1 of 2 workers have pushed" in progress, progress
        sent = time.monotonic()
        w.proc.send_signal(signal.SIGINT)
        if catch == "catch":
            assert w.expect("interrupted ", timeout=5) == {"closed": True}
            ended = time.monotonic() - sent
            status = w.wait(timeout=5)
            exited = time.monotonic() - sent
            assert status == 0, w.err()
        else:
            status = w.wait(timeout=5)
            exited = ended = time.monotonic() - sent
            assert status == -signal.SIGINT, w.err()
            assert "KeyboardInterrupt" in w.err()
        print(f"SIGINT: push_pull ended after {ended:.3f} s, the process "
              f"exited after {exited:.3f} s")
        assert ended < 1.0, f"push_pull ended {ended:.2f} s after SIGINT"
        assert exited < 2.0, f"the process exited {exited:.2f} s after SIGINT"

"""No hidden copies: a worker process that joins, pushes and pulls a 256 MiB
tensor peaks at most 150 MiB above the tensor itself (the interpreter,
numpy, gRPC and the client's chunk buffers)."""

MiB = 1 << 20
TENSOR_BYTES = 256 * MiB

MEMORY_WORKER = """
    import json, sys
    import numpy as np
    import weightd

    def peak():  # Peak resident set size of this process, in bytes.
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    address, nbytes = sys.argv[1], int(sys.argv[2])
    with weightd.Client(address, worker_id="big") as c:
        before = peak()  # Interpreter, numpy, the package, a channel.
        a = np.full(nbytes // 4, 1.5, np.float32)
        c.join({"big": a})                 # Uploads the initial value.
        a[:] = 2.5
        c.push({"big": a}, weight=2.0)     # A round of one: closes at once.
        a[:] = 0.0
        c.pull({"big": a})
        assert a[0] == a[-1] == 2.5, (a[0], a[-1])
        a[:] = 3.5
        c.push_pull({"big": a})
        assert a[0] == a[-1] == 3.5, (a[0], a[-1])
        print("rss", json.dumps({"before": before, "peak": peak(),
                                 "pushed": c.stats()["bytes_pushed"],
                                 "pulled": c.stats()["bytes_pulled"]}),
              flush=True)
"""


def test_peak_rss_of_a_256_mib_worker(server, spawn):
    w = spawn(MEMORY_WORKER, server, TENSOR_BYTES)
    rss = w.expect("rss ", timeout=120)
    assert w.wait(timeout=30) == 0, w.err()
    assert rss["pushed"] == 3 * TENSOR_BYTES   # Join, push, push_pull.
    assert rss["pulled"] == 2 * TENSOR_BYTES   # pull, push_pull.
    over = (rss["peak"] - TENSOR_BYTES) / MiB
    print(f"peak RSS {rss['peak'] / MiB:.0f} MiB = tensor + {over:.0f} MiB "
          f"(before the tensor: {rss['before'] / MiB:.0f} MiB)")
    assert rss["peak"] <= TENSOR_BYTES + 150 * MiB, (
        f"peak RSS {rss['peak'] / MiB:.0f} MiB: tensor + {over:.0f} MiB")

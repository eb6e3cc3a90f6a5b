#!/usr/bin/python3
"""Runs weightd's benchmark scenarios and, in the same run, the baselines
they are compared with; prints a Markdown table and writes summary.json.

Every worker is its own process talking to a separate weightd process over
127.0.0.1 (or a Unix socket), as in production. Each figure is the median of
the measured rounds (after a warm-up round), with min and max.

Usage: run_bench.py --build build/release --out build/bench [--smoke]
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1 << 20


class Local:
    """Where Bench runs its processes: here, every daemon on 127.0.0.1.
    bench/net_bench.py places them on hosts of their own instead."""

    def server(self, index):
        """(argv prefix, address to listen on) of the index-th daemon."""
        return [], "127.0.0.1"

    def worker(self, rank):
        """argv prefix of the rank-th worker."""
        return []

    def dial(self, address):
        """The address workers dial to reach a daemon at `address`."""
        return address


class Bench:
    def __init__(self, build, smoke, reps, hosts=None):
        self.build = build
        self.smoke = smoke
        self.reps = reps
        self.hosts = hosts or Local()
        self.tmp = tempfile.mkdtemp(prefix="weightd-bench.")
        self.rows = []
        self.daemon_args = []  # Added to every weightd's command line.

    def path(self, *parts):
        return os.path.join(self.build, *parts)

    # --- processes ---------------------------------------------------------
    def start(self, argv, ready):
        """Starts a server that writes its address to `ready`; returns
        (process, address)."""
        if os.path.exists(ready):
            os.remove(ready)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                stderr=open(ready + ".log", "w"))
        for _ in range(300):
            if os.path.exists(ready) and os.path.getsize(ready) > 0:
                return proc, open(ready).read().strip()
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        sys.exit("bench: %s did not start (see %s.log)" % (argv[0], ready))

    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @staticmethod
    def peak_rss(proc):
        with open("/proc/%d/status" % proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def parallel(self, commands, timeout=1800, env=None):
        """Runs commands concurrently (with `env` added to the
        environment); returns each one's list of secs."""
        environment = dict(os.environ, **env) if env else None
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env=environment)
                 for c in commands]
        deadline = time.time() + timeout
        results = []
        try:
            for c, p in zip(commands, procs):
                out, err = p.communicate(
                    timeout=max(1.0, deadline - time.time()))
                if p.returncode != 0:
                    sys.exit("bench: %s failed:\n%s" % (" ".join(c), err))
                results.append([json.loads(l)["secs"]
                                for l in out.splitlines() if l.startswith("{")])
        except subprocess.TimeoutExpired:
            sys.exit("bench: %s did not finish within %d s" %
                     (commands[0][0], timeout))
        finally:
            for p in procs:  # The others, if one failed: none is left.
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return results

    @staticmethod
    def slowest(per_worker):
        """Round time: the slowest worker of each round."""
        return [max(r) for r in zip(*per_worker)]

    # --- baselines ---------------------------------------------------------
    def baseline(self, mode, nbytes, reps=None):
        return self.parallel([[self.path("bench", "bench_baseline"),
                               "--mode=" + mode, "--bytes=%d" % nbytes,
                               "--reps=%d" % (reps or self.reps)]])[0]

    def grpc_ceiling(self, workers, nbytes, listen="127.0.0.1:0"):
        """Aggregate bytes/s of W concurrent plain gRPC streams."""
        ready = os.path.join(self.tmp, "sink.addr")
        server, address = self.start(
            [self.path("bench", "bench_baseline"), "--mode=grpc_server",
             "--listen=" + listen, "--ready_file=" + ready], ready)
        try:
            times = self.slowest(self.parallel(
                [[self.path("bench", "bench_baseline"), "--mode=grpc_client",
                  "--server=" + address, "--bytes=%d" % nbytes,
                  "--workers=%d" % workers, "--reps=%d" % self.reps]] * workers))
        finally:
            server.kill()
            server.wait()
        return [workers * nbytes / t for t in times]

    def ping(self, nbytes, reps):
        ready = os.path.join(self.tmp, "sink.addr")
        server, address = self.start(
            [self.path("bench", "bench_baseline"), "--mode=grpc_server",
             "--ready_file=" + ready], ready)
        try:
            return self.parallel([[self.path("bench", "bench_baseline"),
                                   "--mode=ping", "--server=" + address,
                                   "--bytes=%d" % nbytes, "--reps=%d" % reps]])[0]
        finally:
            server.kill()
            server.wait()

    # --- weightd -----------------------------------------------------------
    def rounds(self, workers, layout, nbytes=0, count=1, unix=False,
               reps=None, wire_format="float32", shards=1, split_bytes=None,
               python=False, per_worker=False, shared_memory=False,
               in_place=False):
        """Round times of W bench_workers against a fresh weightd (over TCP,
        or over the Unix socket it also listens on), or `shards` of them,
        and the peak RSS of the first. `python`: the workers are
        bench/bench_worker.py over the Python package (layout single).
        The times are each round's slowest worker's, or with `per_worker`
        every worker's list of round times."""
        daemons, addresses = [], []
        try:
            for i in range(shards):
                ready = os.path.join(self.tmp, "weightd%d.addr" % i)
                sock = os.path.join(self.tmp, "weightd%d.sock" % i)
                prefix, host = self.hosts.server(i)
                daemon, address = self.start(prefix + [
                    self.path("server", "weightd"), "--listen=%s:0" % host,
                    "--unix_socket=" + sock, "--ready_file=" + ready,
                    "--shard_index=%d" % i, "--shard_count=%d" % shards,
                    "--log_level=warn",
                    "--max_tensor_bytes=%d" % (2 << 30)] + self.daemon_args,
                    ready)
                daemons.append(daemon)
                addresses.append("unix:" + sock if unix else
                                 self.hosts.dial(address))
        except SystemExit:  # A shard did not start: none is left running.
            for d in daemons:
                d.kill()
                d.wait()
            raise
        daemon, address = daemons[0], ",".join(addresses)
        joined = os.path.join(self.tmp, "joined")
        if os.path.exists(joined):
            os.remove(joined)
        # The peak RSS of the rounds: reset once every worker has joined
        # (concurrent Joins of a new tensor each upload an initial value).
        peaks = {}

        def reset_peak_after_joins():
            while not os.path.exists(joined) and daemon.poll() is None:
                time.sleep(0.005)
            peaks["joins"] = self.peak_rss(daemon)
            with open("/proc/%d/clear_refs" % daemon.pid, "w") as f:
                f.write("5")
        watcher = threading.Thread(target=reset_peak_after_joins, daemon=True)
        watcher.start()
        if python:
            assert layout == "single" and not split_bytes
            worker = ["/usr/bin/python3", os.path.join(
                os.path.dirname(os.path.abspath(__file__)), "bench_worker.py")]
            extra, env = [], {"PYTHONPATH": self.path("python")}
        else:
            worker = [self.path("bench", "bench_worker")]
            extra = ["--layout=" + layout, "--count=%d" % count] + (
                ["--split_bytes=%d" % split_bytes] if split_bytes else [])
            env = None
        try:
            times = self.parallel(
                [self.hosts.worker(r) + worker + ["--server=" + address,
                           "--rank=%d" % r, "--workers=%d" % workers,
                           "--bytes=%d" % nbytes,
                           "--reps=%d" % (reps or self.reps),
                           "--wire_format=" + wire_format,
                           "--shared_memory=%s" % str(shared_memory).lower(),
                           "--in_place=%s" % str(in_place).lower()]
                 + extra
                 + (["--joined_file=" + joined] if r == 0 else [])
                 for r in range(workers)], env=env)
            watcher.join(timeout=10)
            rss = {"rounds": self.peak_rss(daemon),
                   "with_joins": max(peaks.get("joins", 0),
                                     self.peak_rss(daemon))}
        finally:
            for d in daemons:
                self.stop(d)
        return (times if per_worker else self.slowest(times)), rss

    # --- reporting ---------------------------------------------------------
    def row(self, scenario, workers, nbytes, values, unit, baseline_name,
            baseline, target=None, note="", lower_is_better=False):
        """`values` are the figure's samples; `baseline` the comparable
        number in the same unit. The ratio is median / baseline, or
        baseline / median for a figure where lower is better (a time, a
        size), so that for every row higher is better and meets its target
        at or above it."""
        med = statistics.median(values)
        if not baseline or not med:
            ratio = None
        else:
            ratio = baseline / med if lower_is_better else med / baseline
        self.rows.append({
            "scenario": scenario, "workers": workers, "tensor_bytes": nbytes,
            "median": med, "min": min(values), "max": max(values),
            "unit": unit, "samples": len(values),
            "baseline_name": baseline_name, "baseline": baseline,
            "ratio": ratio, "target": target,
            "lower_is_better": lower_is_better,
            "met": None if target is None or ratio is None else ratio >= target,
            "note": note})
        print("  %-34s %12.4g %-7s ratio %s" % (
            scenario, med, unit, "-" if ratio is None else "%.3f" % ratio),
            flush=True)


    def report(self, out):
        """Writes the rows to out/summary.json and prints them as a table."""
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(self.rows, f, indent=1)
        print()
        print("| scenario | W | tensor | median | min | max | unit | baseline "
              "| ratio | target |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in self.rows:
            print("| %s | %d | %s | %.4g | %.4g | %.4g | %s | %s = %.4g | %s "
                  "| %s |" % (
                      r["scenario"], r["workers"], human(r["tensor_bytes"]),
                      r["median"], r["min"], r["max"], r["unit"],
                      r["baseline_name"], r["baseline"],
                      "-" if r["ratio"] is None else "%.3f" % r["ratio"],
                      "-" if r["target"] is None else ">= %g" % r["target"]))
        print("\nsummary: %s" % os.path.join(out, "summary.json"))


def gbps(nbytes, times):
    return [nbytes / t / 1e9 for t in times]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, a few rounds: checks the harness only")
    ap.add_argument("--only", default="",
                    help="comma-separated scenario numbers to run (default: "
                         "all); 3, 4, 9 and 11 run scenario 1 for their "
                         "baseline")
    args = ap.parse_args()
    only = {int(n) for n in args.only.split(",") if n}

    def want(n):
        return not only or n in only

    smoke = args.smoke
    b = Bench(args.build, smoke, reps=3 if smoke else 10)
    size = 1 * MiB if smoke else 100 * MiB

    # Baselines of scenario 1's size.
    tcp = statistics.median(gbps(size, b.baseline("tcp", size)))
    print("baselines: tcp %.3g GB/s" % tcp, flush=True)

    def sync_round(name, workers, nbytes):
        times, rss = b.rounds(workers, "single", nbytes)
        algbw = gbps(nbytes, times)
        grpc = statistics.median(b.grpc_ceiling(workers, nbytes)) / 1e9
        tcp_here = tcp if nbytes == size else statistics.median(
            gbps(nbytes, b.baseline("tcp", nbytes)))
        b.row(name + " vs grpc_ceiling/2W", workers, nbytes, algbw, "GB/s",
              "grpc_ceiling/(2W)", grpc / (2 * workers), 1.2)
        b.row(name + " vs tcp_ceiling/2W", workers, nbytes, algbw, "GB/s",
              "tcp_ceiling/(2W)", tcp_here / (2 * workers), 0.8)
        return statistics.median(algbw), times

    s1, tcp_many = None, None
    # 1. W=4, one tensor.
    if want(1) or want(3) or want(4) or want(9) or want(11):
        s1, s1_times = sync_round("1 sync W=4", 4, size)
    # 2. Other worker counts and sizes.
    for workers, nbytes in ([(2, size), (8, size), (4, 16 * MiB if not smoke
                            else 4 * MiB)] + ([] if smoke else [(2, 1 << 30)])):
        if want(2):
            sync_round("2 sync W=%d" % workers, workers, nbytes)
    # 3. Wire precision: scenario 1 with 16-bit values on the wire.
    if want(3):
        for fmt in ("bfloat16", "float16"):
            times, _ = b.rounds(4, "single", size, wire_format=fmt)
            b.row("3 sync W=4, %s on the wire" % fmt, 4, size,
                  gbps(size, times), "GB/s", "scenario 1 (float32)", s1, 1.8)
    # 4. A real model's shape, and many small tensors.
    if not smoke and want(4):
        times, _ = b.rounds(4, "resnet")
        resnet_bytes = 25557032 * 4
        b.row("4 resnet50 (161 tensors) W=4", 4, resnet_bytes,
              gbps(resnet_bytes, times), "GB/s", "scenario 1", s1, 0.9)
    if want(4):
        count, each = (100, 4096) if smoke else (10000, 4096)
        many, _ = b.rounds(4, "many", count * each, count=count)
        tcp_many = many
        one, _ = b.rounds(4, "single", count * each)
        b.row("4 %d x 4 KiB, W=4 round time" % count, 4, count * each,
              [t * 1e3 for t in many], "ms", "2 x one tensor's round time",
              2 * statistics.median(one) * 1e3, 1.0, lower_is_better=True)
    # 5. Latency of a tiny round against a unary gRPC ping-pong.
    if want(5):
        lat, _ = b.rounds(4, "single", 4096, reps=20 if smoke else 200)
        ping = statistics.median(b.ping(4096, 20 if smoke else 200))
        lat_ms = [t * 1e3 for t in lat]
        b.row("5 latency p50 W=4 4 KiB", 4, 4096, lat_ms, "ms",
              "3 x grpc ping p50", 3 * ping * 1e3, 1.0, lower_is_better=True)
        p99 = sorted(lat_ms)[int(0.99 * (len(lat_ms) - 1))]
        b.rows[-1]["p99"] = p99
    # 6. The averaging kernel alone.
    if want(6):
        kbytes = 4 * MiB if smoke else 100 * MiB
        membw = statistics.median(gbps(kbytes, b.baseline("membw", kbytes)))
        b.row("6 averaging kernel", 1, kbytes, gbps(kbytes, b.baseline("kernel", kbytes)),
              "GB/s", "membw", membw, 0.5)
    # 7. Server memory during W=8 rounds of a big tensor.
    if want(7):
        mbytes = 8 * MiB if smoke else 256 * MiB
        _, rss = b.rounds(8, "single", mbytes, reps=3)
        limit = 2.5 * mbytes + 100 * MiB
        b.row("7 server peak RSS W=8", 8, mbytes, [rss["rounds"] / MiB], "MiB",
              "2.5 x tensor + 100 MiB", limit / MiB, 1.0, lower_is_better=True,
              note="peak including the 8 concurrent Joins: %.0f MiB" %
              (rss["with_joins"] / MiB))
    # 8. Scale: many worker processes on a small tensor.
    if want(8):
        small, few_w, many_w = (256 << 10, 4, 8) if smoke else (1 * MiB, 8, 32)
        t_few, _ = b.rounds(few_w, "single", small)
        t_many, _ = b.rounds(many_w, "single", small)
        # Linear growth: the round time at many_w is at most many_w / few_w
        # times the round time at few_w.
        b.row("8 scale W=%d round time" % many_w, many_w, small,
              [t * 1e3 for t in t_many], "ms",
              "W=%d round time x %d/%d" % (few_w, many_w, few_w),
              statistics.median(t_few) * 1e3 * many_w / few_w, 1.0,
              lower_is_better=True)
    # 9. Same-host fast path: scenario 1 over the daemon's Unix socket.
    if want(9):
        times, _ = b.rounds(4, "single", size, unix=True)
        b.row("9 sync W=4 over unix socket", 4, size, gbps(size, times), "GB/s",
              "scenario 1 over TCP", s1, None)
    # 10. Scenario 1 over 1, 2 and 4 shards (the tensor split by rows over
    # all of them). On one machine the shards share its two cores: this
    # reports, docs/scaling.md models a real network.
    if want(10):
        split = 256 << 10 if smoke else None
        one = None
        for shards in (1, 2) if smoke else (1, 2, 4):
            times, _ = b.rounds(4, "single", size, shards=shards,
                                split_bytes=split)
            algbw = gbps(size, times)
            if one is None:
                one = statistics.median(algbw)
            b.row("10 sync W=4 over %d shard(s)" % shards, 4, size, algbw,
                  "GB/s", "1 shard", one)

    # 11. Scenario 1 with Python workers (bench/bench_worker.py over the
    # weightd package) against the C++ bench_worker figure of this run.
    if want(11):
        times, _ = b.rounds(4, "single", size, python=True)
        b.row("11 sync W=4, Python workers", 4, size, gbps(size, times),
              "GB/s", "scenario 1 (C++ bench_worker)", s1, 0.9)

    # 12. Same-host data path: the workers hand the daemon a shared-memory
    # segment and move their values through it (docs/protocol.md).
    if want(12):
        def shm(workers, layout, nbytes=0, count=1):
            return b.rounds(workers, layout, nbytes, count=count,
                            shared_memory=True)
        times, rss = shm(4, "single", size)
        s12 = gbps(size, times)
        b.row("12 shm W=4 vs tcp_ceiling/2W", 4, size, s12, "GB/s",
              "tcp_ceiling/(2W)", tcp / 8, 2.0)
        if s1 is None:
            s1, s1_times = sync_round("1 sync W=4", 4, size)
        b.row("12 shm W=4 vs scenario 1 (TCP)", 4, size, s12, "GB/s",
              "scenario 1", s1, 3.0)
        # The same with the tensors kept in the segment (SharedBufferFor):
        # the workers copy nothing.
        times, _ = b.rounds(4, "single", size, shared_memory=True,
                            in_place=True)
        b.row("12 shm W=4 in place vs scenario 1", 4, size, gbps(size, times),
              "GB/s", "scenario 1", s1, 3.0)
        # What the daemon holds: the value, the accumulator, and the 4
        # workers' segments it maps (their pages count in its RSS once it
        # read them), plus the process itself (64 MiB: code, gRPC).
        b.row("12 shm W=4 server peak RSS", 4, size, [rss["rounds"] / MiB],
              "MiB", "value + accumulator + 4 segments + 64 MiB",
              6 * size / MiB + 64, 1.0, lower_is_better=True)
        for workers in (2, 8):
            times, _ = shm(workers, "single", size)
            b.row("12 shm W=%d vs tcp_ceiling/2W" % workers, workers, size,
                  gbps(size, times), "GB/s", "tcp_ceiling/(2W)",
                  tcp / (2 * workers), None)
        if not smoke:
            times, _ = shm(4, "resnet")
            resnet_bytes = 25557032 * 4
            b.row("12 shm resnet50 (161 tensors) W=4", 4, resnet_bytes,
                  gbps(resnet_bytes, times), "GB/s", "scenario 12 W=4",
                  statistics.median(s12), None)
        count, each = (100, 4096) if smoke else (10000, 4096)
        if tcp_many is None:
            tcp_many, _ = b.rounds(4, "many", count * each, count=count)
        many, _ = shm(4, "many", count * each, count=count)
        b.row("12 shm %d x 4 KiB W=4 round time" % count, 4, count * each,
              [t * 1e3 for t in many], "ms", "the same over TCP",
              statistics.median(tcp_many) * 1e3, 1.0, lower_is_better=True)

    b.report(args.out)


def human(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return "%g %s" % (n / size, unit)
    return "%d B" % n


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Runs the experiments of issue 17 (how shared weights are combined) with a
real weightd daemon and real weightd_worker processes (examples/
train_worker.cc) training the Fashion-MNIST MLP, every process on 127.0.0.1,
and prints a Markdown table per experiment.

  noniid     8 workers on label-skewed shards (Dirichlet alpha 0.1 and 1.0):
             FedAvg (optimizer=plain) vs FedAvgM (momentum) vs FedAdam vs
             FedYogi: rounds to reach --target test accuracy, and accuracy
             after the fixed number of rounds.
  attack     1 and 2 of 8 workers push corrupted weights (signflip: times
             -10; noise: N(0, 10^2)); aggregator mean vs median vs
             trimmed_mean vs clipped_mean: final accuracy, and each
             aggregator's clean run's.
  straggler  4 workers, one 3 times slower (--slowdown=3): sync, sync with
             quorum 3/4, async, bounded staleness 1, 2, 4: wall-clock seconds
             until the evaluating (fast) worker reaches --target.
  mixed      the sharing demo's two tasks (scripts/local_job.sh --sharing)
             with per-tensor defaults from a --policy_file: the shared hidden
             layer under one policy, each head under another.

Every setting runs --repeats times with seeds 1, 2, ... (the same seeds for
every setting, so settings are compared on the same partitions and initial
models); the tables give the mean and the min-max over the repeats. Worker 0
is honest and fast, and evaluates the averaged model after every round.

Sizes: --size=full is what docs/algorithms.md reports; --size=small is a
reduced one (scripts/demo.sh --experiment); --size=ci takes seconds per run
(few rounds and local steps, --train_limit) and is meant for --check, which
asserts directions only, never times (e.g. under attack the median's final
accuracy beats the mean's; every optimizer learns above chance), that the
server holds every tensor under the policy its workers (or the
--policy_file) declared (weightctl tensors), and, from the pushes' history
(weightctl history), that sync waits for the straggler, a quorum does not,
async runs ahead and bounded staleness s stays within s; it exits 1
naming each check that failed.

Each run's daemon and worker logs, the tables (NAME.md) and every run's
parsed figures (results.json) go under --out (printed at start). Every
process has a timeout; on Ctrl-C or SIGTERM every process started is
killed. --cpu_lock=FILE takes an flock on FILE around each run (not the
whole batch), so that other CPU-heavy jobs of a shared machine can
interleave and do not skew the runs' timings.

Usage: experiments.py [--build build/release] [--size ci|small|full]
                      [--repeats N] [--check] [--out DIR] [NAME ...|all]
"""
import argparse
import fcntl
import fnmatch
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROUND_LINE = re.compile(
    r"^round (?P<round>\d+)  train_loss (?P<train_loss>\S+)  "
    r"test_acc (?P<test_acc>\S+)  bytes (?P<bytes>\d+)  secs (?P<secs>\S+)$")
FINAL_LINE = re.compile(r"^final test accuracy: (\S+)$")
MISSED_LINE = re.compile(r"(\d+) round\(s\) moved on without this worker")

# Model tensors of the fashion10 task (the worker's Mlp::Tensors names).
FASHION10_TENSORS = ["hidden/w", "hidden/b", "fashion10/head/w",
                     "fashion10/head/b"]

# Every tensor of the mixed experiment (both tasks).
MIXED_TENSORS = ["hidden/w", "hidden/b", "fashion10/head/w", "fashion10/head/b",
                 "upper2/head/w", "upper2/head/b",
                 "metrics/fashion10/train_loss", "metrics/upper2/train_loss"]

# Per size and experiment: worker flags and the run's timeout (seconds).
SIZES = {
    "ci": {
        # Evaluation on 1000 test images: the full 10000 would take longer
        # than a round's training here (and make the evaluating worker, not
        # the straggler, the slowest).
        "noniid": {"rounds": 5, "local_steps": 25, "train_limit": 1500,
                   "test_limit": 1000, "timeout": 90},
        "attack": {"rounds": 4, "local_steps": 25, "train_limit": 1500,
                   "test_limit": 1000, "timeout": 90},
        "straggler": {"rounds": 8, "local_steps": 100, "train_limit": 3000,
                      "test_limit": 1000, "timeout": 90},
        "mixed": {"rounds": 5, "local_steps": 50, "train_limit": 3000,
                  "test_limit": 1000, "labels": 300, "timeout": 90},
    },
    "small": {
        "noniid": {"rounds": 30, "local_steps": 50, "train_limit": 0,
                   "timeout": 600},
        "attack": {"rounds": 15, "local_steps": 50, "train_limit": 0,
                   "timeout": 600},
        "straggler": {"rounds": 20, "local_steps": 100, "train_limit": 0,
                      "timeout": 600},
        "mixed": {"rounds": 20, "local_steps": 200, "train_limit": 0,
                  "labels": 300, "timeout": 600},
    },
    "full": {
        "noniid": {"rounds": 100, "local_steps": 100, "train_limit": 0,
                   "timeout": 3600},
        "attack": {"rounds": 40, "local_steps": 100, "train_limit": 0,
                   "timeout": 3600},
        "straggler": {"rounds": 40, "local_steps": 200, "train_limit": 0,
                      "timeout": 3600},
        "mixed": {"rounds": 50, "local_steps": 400, "train_limit": 0,
                  "labels": 300, "timeout": 3600},
    },
}

# The server optimizers compared on non-IID data, as worker --policy texts.
# Server learning rates: the best final accuracy of one run per value at
# --size=small, alpha 0.1, seed 1 (adam and yogi: lr 0.003, 0.01, 0.03, 0.1;
# momentum: 0.5 and 0.9 at lr 1); tau, beta1 and beta2 are the FedOpt
# paper's defaults (Reddi et al. 2021), as weightd's.
OPTIMIZERS = [
    ("FedAvg", "optimizer=plain"),
    ("FedAvgM", "optimizer=momentum lr=1 momentum=0.5"),
    ("FedAdam", "optimizer=adam lr=0.03 beta1=0.9 beta2=0.99 tau=0.001"),
    ("FedYogi", "optimizer=yogi lr=0.03 beta1=0.9 beta2=0.99 tau=0.001"),
]

# The aggregators compared under attack. trim=0.25 drops 2 of 8 values per
# side (floor(0.25 * 8)), enough for 2 bad workers. clip_norm bounds each
# contribution's update per tensor (an honest hidden/w update of a round is
# about that large at these sizes).
AGGREGATORS = [
    ("mean", "aggregator=mean"),
    ("median", "aggregator=median"),
    ("trimmed_mean", "aggregator=trimmed_mean trim=0.25"),
    ("clipped_mean", "aggregator=clipped_mean clip_norm=1"),
]

# The straggler experiment's consistency settings: (label, worker --policy,
# extra weightd flags).
CONSISTENCY = [
    ("sync", "consistency=sync", []),
    ("sync, quorum 3/4", "consistency=sync",
     ["--round_quorum=3", "--round_timeout=0s"]),
    ("async", "consistency=async", []),
    ("bounded s=1", "consistency=bounded staleness=1", []),
    ("bounded s=2", "consistency=bounded staleness=2", []),
    ("bounded s=4", "consistency=bounded staleness=4", []),
]

# The mixed experiment: (label, --policy_file contents or None).
MIXED = [
    ("every tensor: plain mean (defaults)", None),
    ("hidden: FedAvgM; heads: plain",
     "hidden/*  optimizer=momentum lr=1 momentum=0.5\n"
     "*/head/*  optimizer=plain aggregator=mean\n"
     "metrics/*  optimizer=plain aggregator=mean\n"),
    ("hidden: FedAdam + trimmed mean; 10-class head: FedAvgM; 2-class head: "
     "plain",
     "hidden/*  optimizer=adam lr=0.03 aggregator=trimmed_mean trim=0.25\n"
     "fashion10/head/*  optimizer=momentum lr=1 momentum=0.5\n"
     "upper2/head/*  optimizer=plain\n"
     "metrics/*  optimizer=plain aggregator=mean\n"),
]


class Failure(Exception):
    """A run that did not produce its figures."""


class Runner:
    """Starts daemons and workers, and kills whatever it started on exit."""

    def __init__(self, args):
        self.args = args
        self.build = args.build
        self.weightd = os.path.join(args.build, "server", "weightd")
        self.worker = os.path.join(args.build, "examples", "weightd_worker")
        self.weightctl = os.path.join(args.build, "tools", "weightctl")
        for binary in (self.weightd, self.worker):
            if not os.access(binary, os.X_OK):
                sys.exit("experiments: %s is missing; build first "
                         "(scripts/build.sh)" % binary)
        # The kernel kills a child whose parent dies (even by SIGKILL).
        setpriv = shutil.which("setpriv")
        self.prefix = [setpriv, "--pdeathsig", "KILL"] if setpriv else []
        self.procs = []

    def spawn(self, argv, log):
        out = open(log, "w")
        # No preexec_fn (it forces fork(), which gRPC's fork handler can
        # hang in): setpriv sets the death signal instead.
        proc = subprocess.Popen(self.prefix + argv, stdout=out,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append(proc)
        return proc

    def kill_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []

    def stop(self, proc, grace=10):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def start_daemon(self, logs, flags):
        ready = os.path.join(logs, "weightd.addr")
        daemon = self.spawn([self.weightd, "--listen=127.0.0.1:0",
                             "--ready_file=" + ready, "--insecure",
                             "--history_per_tensor=100000"] + flags,
                            os.path.join(logs, "weightd.log"))
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(ready) and os.path.getsize(ready) > 0:
                with open(ready) as f:
                    return daemon, f.read().strip()
            if daemon.poll() is not None:
                raise Failure("weightd exited at start: " +
                              tail(os.path.join(logs, "weightd.log")))
            time.sleep(0.05)
        raise Failure("weightd did not start within 30 s")

    def weightctl_json(self, *args):
        """weightctl ARGS --json against a daemon, parsed."""
        if not os.access(self.weightctl, os.X_OK):
            raise Failure("%s is missing (a build without "
                          "WEIGHTD_BUILD_TOOLS?): it reads the server's "
                          "policies and history" % self.weightctl)
        command = [self.weightctl] + list(args) + ["--json"]
        try:
            out = subprocess.run(command, capture_output=True, text=True,
                                 timeout=60)
        except subprocess.TimeoutExpired:
            raise Failure("%s did not answer in 60 s" % " ".join(command))
        if out.returncode != 0:
            raise Failure("%s failed: %s" % (" ".join(command),
                                             out.stderr.strip()))
        return json.loads(out.stdout)

    def history(self, address, tensor):
        """Every version's record of `tensor` (weightctl history)."""
        return self.weightctl_json("history", tensor, "--last=100000",
                                   "--server=" + address)

    def policies(self, address):
        """{tensor name: the policy the server holds it under}."""
        return {t["name"]: t["policy"] for t in
                self.weightctl_json("tensors", "--server=" + address)}

    def run(self, logs, workers, daemon_flags=(), policy_file=None,
            timeout=600, history_of=None):
        """Runs one job: a fresh daemon (with `daemon_flags`, and
        `policy_file` text as its --policy_file) and `workers`, a list of
        (name, flags). Returns {name: parsed log}, "policies": the policy
        the server holds each tensor under and, with `history_of`,
        "history": that tensor's version records. Raises Failure if a
        process fails or the job outlives `timeout` seconds."""
        os.makedirs(logs, exist_ok=True)
        flags = list(daemon_flags)
        if policy_file is not None:
            path = os.path.join(logs, "policy.txt")
            with open(path, "w") as f:
                f.write(policy_file)
            flags.append("--policy_file=" + path)
        with CpuLock(self.args.cpu_lock):
            try:
                daemon, address = self.start_daemon(logs, flags)
                started = time.time()
                procs = [(name, self.spawn(
                    [self.worker, "--server=" + address,
                     "--connect_timeout=30s", "--barrier_timeout=60s"] +
                    worker_flags, os.path.join(logs, name + ".log")))
                    for name, worker_flags in workers]
                deadline = started + timeout
                for name, proc in procs:
                    try:
                        proc.wait(timeout=max(0.1, deadline - time.time()))
                    except subprocess.TimeoutExpired:
                        raise Failure("worker %s did not finish within %d s "
                                      "(logs: %s)" % (name, timeout, logs))
                    if proc.returncode != 0:
                        raise Failure("worker %s exited %d: %s" % (
                            name, proc.returncode,
                            tail(os.path.join(logs, name + ".log"))))
                results = {name: parse_log(os.path.join(logs, name + ".log"))
                           for name, _ in workers}
                for name, worker_flags in workers:
                    if "--eval" in worker_flags and results[name]["final"] is None:
                        raise Failure("worker %s printed no final accuracy: %s"
                                      % (name, tail(os.path.join(
                                          logs, name + ".log"))))
                results["policies"] = self.policies(address)
                if history_of:
                    results["history"] = self.history(address, history_of)
                return results
            finally:
                # SIGTERM first: the daemon's log ends with its drain.
                if self.procs:
                    self.stop(self.procs[0])
                self.kill_all()

    def run_alone(self, logs, name, flags, timeout):
        """A standalone worker (no daemon)."""
        os.makedirs(logs, exist_ok=True)
        with CpuLock(self.args.cpu_lock):
            try:
                proc = self.spawn([self.worker, "--standalone"] + flags,
                                  os.path.join(logs, name + ".log"))
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise Failure("%s did not finish within %d s" %
                                  (name, timeout))
                if proc.returncode != 0:
                    raise Failure("%s exited %d: %s" % (
                        name, proc.returncode,
                        tail(os.path.join(logs, name + ".log"))))
                return parse_log(os.path.join(logs, name + ".log"))
            finally:
                self.kill_all()


class CpuLock:
    """flock(FILE) for the duration of a run; nothing without a file."""

    def __init__(self, path):
        self.path = path
        self.file = None

    def __enter__(self):
        if self.path:
            self.file = open(self.path, "a")
            fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        if self.file:
            self.file.close()  # Releases the lock.
            self.file = None


def tail(path, lines=5):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def parse_log(path, round_line=ROUND_LINE):
    """A worker's round lines (`round_line`'s named groups: round and bytes
    as int, the rest as float), final accuracy and missed rounds."""
    rounds, final, missed = [], None, 0
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = round_line.match(line)
            if m:
                rounds.append({
                    key: int(value) if key in ("round", "bytes")
                    else float(value)
                    for key, value in m.groupdict().items()})
                continue
            m = FINAL_LINE.match(line)
            if m:
                final = float(m.group(1))
                continue
            m = MISSED_LINE.search(line)
            if m:
                missed = int(m.group(1))
    return {"rounds": rounds, "final": final, "missed": missed}


def policy_mismatches(declared, held):
    """How the policy the server holds a tensor under (weightctl tensors
    --json's "policy") differs from the `declared` text: each key the text
    names must have its value."""
    problems = []
    for token in declared.replace(",", " ").split():
        key, _, value = token.partition("=")
        if key in ("consistency", "optimizer", "aggregator"):
            got = held.get(key)
            if got != value:
                problems.append("%s %s, not %s" % (key, got, value))
            continue
        got = held.get("params", {}).get(key)
        if got is None or abs(got - float(value)) > 1e-9 * max(
                1.0, abs(float(value))):
            problems.append("%s %s, not %s" % (key, got, value))
    return problems


def bookkeeping_policy(policy):
    """What weightd_worker declares for metrics/ and checks/ tensors when
    its --policy is `policy` (examples/train_worker.cc, BookkeepingPolicy)."""
    if not policy:
        return ""
    kept = [t for t in policy.replace(",", " ").split()
            if t.startswith(("consistency=", "staleness="))]
    return " ".join(kept + ["optimizer=plain", "aggregator=mean"])


def fashion10_declared(policy):
    """{tensor: declared policy} of a fashion10 worker with --policy."""
    declared = dict.fromkeys(FASHION10_TENSORS, policy)
    declared["metrics/fashion10/train_loss"] = bookkeeping_policy(policy)
    return declared


def first_reaching(log, target):
    """(rounds done, secs) when the evaluated accuracy first reached
    `target`, or None."""
    for i, r in enumerate(log["rounds"]):
        if r["test_acc"] >= target:
            return i + 1, r["secs"]
    return None


# --- figures ----------------------------------------------------------------
def spread(values, digits):
    """'mean (min-max)' of the values, or '-' for none."""
    if not values:
        return "-"
    fmt = "%%.%df" % digits
    mean = fmt % statistics.mean(values)
    if len(values) == 1:
        return mean
    return "%s (%s-%s)" % (mean, fmt % min(values), fmt % max(values))


def reached(values, n, digits):
    """A time or round count to the target over n runs, of which
    len(values) reached it."""
    if n == 0:
        return "-"
    if not values:
        return "not reached (0/%d)" % n
    text = spread(values, digits)
    return text if len(values) == n else "%s, %d/%d reached" % (
        text, len(values), n)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the experiments ----------------------------------------------------------
class Experiment:
    """One named experiment: its settings, runs, table and checks."""

    def __init__(self, runner, args, out):
        self.runner = runner
        self.args = args
        self.size = SIZES[args.size][self.name]
        self.out = os.path.join(out, self.name)
        self.results = {}  # setting key -> list of per-repeat results
        self.failures = []  # (setting key, seed, message)
        # (setting key, seed, tensor held under another policy than declared)
        self.policy_problems = []
        self.target = args.target

    def common_flags(self, seed):
        s = self.size
        flags = ["--rounds=%d" % s["rounds"],
                 "--local_steps=%d" % s["local_steps"], "--seed=%d" % seed]
        if s.get("train_limit"):
            flags.append("--train_limit=%d" % s["train_limit"])
        if s.get("test_limit"):
            flags.append("--test_limit=%d" % s["test_limit"])
        return flags

    def job(self, logs, workers, declared, **kwargs):
        """Runner.run, and a list of the tensors whose policy on the server
        is not the `declared` one ({tensor: policy text})."""
        results = self.runner.run(logs, workers, timeout=self.size["timeout"],
                                  **kwargs)
        problems = []
        for tensor, text in sorted(declared.items()):
            held = results["policies"].get(tensor)
            if held is None:
                problems.append("%s: not on the server" % tensor)
                continue
            for p in policy_mismatches(text, held):
                problems.append("%s: %s" % (tensor, p))
        results["policy_problems"] = problems
        return results

    def run_all(self):
        for repeat in range(self.args.repeats):
            for key, run in self.settings():
                if self.args.only and not any(o in key
                                              for o in self.args.only):
                    continue
                seed = repeat + 1
                logs = os.path.join(self.out, slug(key), "seed%d" % seed)
                started = time.time()
                try:
                    result = run(seed, logs)
                except Failure as e:
                    self.failures.append((key, seed, str(e)))
                    print("  %-50s seed %d: FAILED: %s" % (key, seed, e),
                          flush=True)
                    continue
                self.results.setdefault(key, []).append(result)
                print("  %-50s seed %d: %s (%.0f s)" % (
                    key, seed, self.summary(result), time.time() - started),
                    flush=True)
                problems = result.get("policy_problems", [])
                if problems:
                    self.policy_problems.append((key, seed,
                                                 "; ".join(problems)))
                    print("  WARNING: not what the workers declared: %s" %
                          "; ".join(problems), flush=True)

    def summary(self, result):
        return "final acc %.4f" % result["eval"]["final"]

    def finals(self, key):
        return [r["eval"]["final"] for r in self.results.get(key, [])]

    def failed_note(self, key):
        n = sum(1 for k, _, _ in self.failures if k == key)
        return " (%d failed)" % n if n else ""

    def check_finished(self, keys):
        """Every setting produced every repeat, its tensors held under the
        policies its workers declared."""
        problems = []
        for key in keys:
            for k, seed, message in self.failures:
                if k == key:
                    problems.append("%s: %s (seed %d) did not finish: %s" % (
                        self.name, key, seed, message))
        for key, seed, message in self.policy_problems:
            problems.append("%s: %s (seed %d): the server should hold every "
                            "tensor under the policy declared, but holds %s"
                            % (self.name, key, seed, message))
        return problems


def slug(text):
    return re.sub(r"[^A-Za-z0-9.=]+", "_", text).strip("_")


class NonIid(Experiment):
    name = "noniid"
    alphas = (0.1, 1.0)
    workers = 8

    def settings(self):
        for alpha in self.alphas:
            for label, policy in OPTIMIZERS:
                key = "alpha %g, %s" % (alpha, label)
                yield key, (lambda seed, logs, alpha=alpha, policy=policy:
                            self.one(seed, logs, alpha, policy))

    def one(self, seed, logs, alpha, policy):
        n = self.workers
        workers = []
        for rank in range(n):
            flags = self.common_flags(seed) + [
                "--workers=%d" % n, "--rank=%d" % rank,
                "--partition=dirichlet", "--dirichlet_alpha=%g" % alpha,
                "--partition_seed=%d" % seed, "--policy=" + policy]
            if rank == 0:
                flags.append("--eval")
            workers.append(("worker-%d" % rank, flags))
        results = self.job(logs, workers, fashion10_declared(policy))
        return {"eval": results["worker-0"],
                "policy_problems": results["policy_problems"]}

    def report(self):
        rounds = self.size["rounds"]
        rows = []
        for alpha in self.alphas:
            for label, policy in OPTIMIZERS:
                key = "alpha %g, %s" % (alpha, label)
                runs = self.results.get(key, [])
                hits = [first_reaching(r["eval"], self.target) for r in runs]
                rows.append([
                    "%g" % alpha, label, "`%s`" % policy,
                    reached([h[0] for h in hits if h], len(runs), 1),
                    spread(self.finals(key), 4) + self.failed_note(key)])
        return table(["alpha", "optimizer", "worker --policy",
                      "rounds to %.2f" % self.target,
                      "test acc after %d rounds" % rounds], rows)

    def check(self):
        keys = ["alpha %g, %s" % (a, label) for a in self.alphas
                for label, _ in OPTIMIZERS]
        problems = self.check_finished(keys)
        for key in keys:
            for final in self.finals(key):
                if not final > 0.2:
                    problems.append(
                        "noniid: %s should learn above chance (final "
                        "accuracy > 0.2), got %.4f" % (key, final))
        # Less skew, better FedAvg: alpha 1.0's final accuracy beats 0.1's.
        skewed = self.finals("alpha 0.1, FedAvg")
        mild = self.finals("alpha 1, FedAvg")
        if skewed and mild and not statistics.mean(mild) > statistics.mean(
                skewed):
            problems.append(
                "noniid: FedAvg on alpha 1.0 shards should beat FedAvg on "
                "alpha 0.1 shards, got %.4f vs %.4f" % (
                    statistics.mean(mild), statistics.mean(skewed)))
        return problems


class Attack(Experiment):
    name = "attack"
    workers = 8
    # (bad workers, corruption); 0 bad: the clean run.
    conditions = [(0, "none"), (1, "signflip"), (2, "signflip"), (1, "noise"),
                  (2, "noise")]

    def key(self, bad, corruption, aggregator):
        if bad == 0:
            return "clean, %s" % aggregator
        return "%d bad %s, %s" % (bad, corruption, aggregator)

    def settings(self):
        for bad, corruption in self.conditions:
            for label, policy in AGGREGATORS:
                yield self.key(bad, corruption, label), (
                    lambda seed, logs, bad=bad, corruption=corruption,
                    policy=policy: self.one(seed, logs, bad, corruption,
                                            policy))

    def one(self, seed, logs, bad, corruption, policy):
        n = self.workers
        workers = []
        for rank in range(n):
            flags = self.common_flags(seed) + [
                "--workers=%d" % n, "--rank=%d" % rank, "--policy=" + policy]
            if rank == 0:
                flags.append("--eval")
            if rank >= n - bad:  # The last ranks are the bad ones.
                flags.append("--corrupt=" + corruption)
            workers.append(("worker-%d" % rank, flags))
        results = self.job(logs, workers, fashion10_declared(policy))
        return {"eval": results["worker-0"],
                "policy_problems": results["policy_problems"]}

    def report(self):
        header = ["aggregator", "worker --policy", "clean"]
        for bad, corruption in self.conditions[1:]:
            header.append("%d of 8 %s" % (bad, corruption))
        rows = []
        for label, policy in AGGREGATORS:
            row = [label, "`%s`" % policy]
            for bad, corruption in self.conditions:
                key = self.key(bad, corruption, label)
                row.append(spread(self.finals(key), 4) + self.failed_note(key))
            rows.append(row)
        return ("Final test accuracy after %d rounds.\n\n" %
                self.size["rounds"] + table(header, rows))

    def check(self):
        keys = [self.key(b, c, a) for b, c in self.conditions
                for a, _ in AGGREGATORS]
        problems = self.check_finished(keys)
        for bad, corruption in self.conditions[1:]:
            mean = self.finals(self.key(bad, corruption, "mean"))
            for robust in ("median", "trimmed_mean"):
                other = self.finals(self.key(bad, corruption, robust))
                if mean and other and not (statistics.mean(other) >
                                           statistics.mean(mean) + 0.05):
                    problems.append(
                        "attack: with %d %s worker(s), %s's final accuracy "
                        "should beat the mean's by more than 0.05, got %.4f "
                        "vs %.4f" % (bad, corruption, robust,
                                     statistics.mean(other),
                                     statistics.mean(mean)))
        clean = self.finals(self.key(0, "none", "mean"))
        for robust, _ in AGGREGATORS:
            for final in self.finals(self.key(0, "none", robust)):
                if not final > 0.2:
                    problems.append(
                        "attack: %s without attack should learn above chance "
                        "(> 0.2), got %.4f" % (robust, final))
        attacked = self.finals(self.key(2, "signflip", "mean"))
        if clean and attacked and not (statistics.mean(clean) >
                                       statistics.mean(attacked) + 0.05):
            problems.append(
                "attack: 2 signflip workers should hurt the mean (clean "
                "%.4f, attacked %.4f)" % (statistics.mean(clean),
                                          statistics.mean(attacked)))
        return problems


class Straggler(Experiment):
    name = "straggler"
    workers = 4
    slowdown = 3

    def settings(self):
        for label, policy, flags in CONSISTENCY:
            yield label, (lambda seed, logs, policy=policy, flags=flags:
                          self.one(seed, logs, policy, flags))

    def one(self, seed, logs, policy, daemon_flags):
        n = self.workers
        workers = []
        for rank in range(n):
            flags = self.common_flags(seed) + [
                "--workers=%d" % n, "--rank=%d" % rank, "--policy=" + policy]
            if rank == 0:
                flags.append("--eval")
            if rank == n - 1:
                flags.append("--slowdown=%g" % self.slowdown)
            workers.append(("worker-%d" % rank, flags))
        results = self.job(logs, workers, fashion10_declared(policy),
                           daemon_flags=daemon_flags, history_of="hidden/w")
        return {"eval": results["worker-0"],
                "policy_problems": results["policy_problems"],
                "straggler_missed": results["worker-%d" % (n - 1)]["missed"],
                "pushes": push_counts(results["history"]),
                "max_lead": max_lead(results["history"])}

    def summary(self, result):
        hit = first_reaching(result["eval"], self.target)
        return "final acc %.4f, %s, straggler missed %d, max lead %s" % (
            result["eval"]["final"],
            "%.2f reached at %.1f s" % (self.target, hit[1]) if hit else
            "%.2f not reached" % self.target,
            result["straggler_missed"], result["max_lead"])

    def report(self):
        rows = []
        for label, policy, flags in CONSISTENCY:
            runs = self.results.get(label, [])
            hits = [first_reaching(r["eval"], self.target) for r in runs]
            total = [r["eval"]["rounds"][-1]["secs"] for r in runs
                     if r["eval"]["rounds"]]
            straggler = "fashion10-%d" % (self.workers - 1)
            rows.append([
                label, "`%s`%s" % (policy, (" + " + " ".join(
                    "`%s`" % f for f in flags)) if flags else ""),
                reached([h[1] for h in hits if h], len(runs), 1),
                spread(total, 1),
                spread(self.finals(label), 4) + self.failed_note(label),
                spread([r["pushes"].get(straggler, 0) for r in runs], 1),
                spread([r["max_lead"] for r in runs], 1)])
        return ("One of %d workers %g times slower; %d rounds per worker. "
                "Wall-clock seconds of the fast evaluating worker. Pushes: "
                "the straggler's contributions to hidden/w's versions; "
                "lead: the most pushes a worker was ahead of the slowest "
                "before the first finished (weightctl history).\n\n" % (
                    self.workers, self.slowdown, self.size["rounds"]) +
                table(["consistency", "worker --policy (+ weightd flags)",
                       "secs to %.2f" % self.target, "secs to finish",
                       "final test acc", "straggler pushes",
                       "max lead (pushes)"], rows))

    def check(self):
        labels = [label for label, _, _ in CONSISTENCY]
        problems = self.check_finished(labels)
        rounds = self.size["rounds"]
        for label in labels:
            for r in self.results.get(label, []):
                if not r["eval"]["final"] > 0.2:
                    problems.append(
                        "straggler: %s should learn above chance (> 0.2), "
                        "got %.4f" % (label, r["eval"]["final"]))
                lead = r["max_lead"]
                if label == "sync" and (r["straggler_missed"] != 0 or
                                        lead > 0):
                    problems.append(
                        "straggler: sync rounds should wait for the "
                        "straggler, but it missed %d round(s), lead %d" % (
                            r["straggler_missed"], lead))
                if label.startswith("sync, quorum") and not (
                        r["straggler_missed"] > 0):
                    problems.append(
                        "straggler: with a quorum of 3/4 rounds should close "
                        "without the straggler, but it missed none")
                if label == "async" and not lead > 4:
                    problems.append(
                        "straggler: async workers should run ahead of the "
                        "straggler (by more than 4 pushes in %d rounds), "
                        "got a lead of %d" % (rounds, lead))
                if label.startswith("bounded"):
                    bound = int(label.split("=")[1])
                    if lead < 1:
                        problems.append(
                            "straggler: %s: the fast workers should get "
                            "ahead of the straggler (as sync never lets "
                            "them), got a lead of 0" % label)
                    if lead > bound:
                        problems.append(
                            "straggler: %s: no worker should get more than "
                            "%d push(es) ahead of the straggler, got %d" % (
                                label, bound, lead))
        return problems


def push_counts(history):
    counts = {}
    for record in history or []:
        for c in record["contributions"]:
            counts[c["worker_id"]] = counts.get(c["worker_id"], 0) + 1
    return counts


def max_lead(history):
    """The most pushes to a tensor any worker was ahead of the one that had
    pushed least, from the records of its versions in order (each
    contribution counts once), until some worker made its last push (a
    worker done no longer holds the others back)."""
    if not history:
        return 0
    totals = push_counts(history)
    counts = dict.fromkeys(totals, 0)
    lead = 0
    for record in sorted(history, key=lambda r: r["version"]):
        for c in record["contributions"]:
            counts[c["worker_id"]] += 1
        lead = max(lead, max(counts.values()) - min(counts.values()))
        if any(counts[w] == totals[w] for w in counts):
            break
    return lead


class Mixed(Experiment):
    name = "mixed"

    def settings(self):
        for label, policy_file in MIXED:
            yield label, (lambda seed, logs, policy_file=policy_file:
                          self.one(seed, logs, policy_file))
        yield "2-class model alone", self.alone

    def task_flags(self, seed):
        s = self.size
        flags = ["--rounds=%d" % s["rounds"],
                 "--local_steps=%d" % s["local_steps"], "--seed=%d" % seed]
        if s.get("test_limit"):
            flags.append("--test_limit=%d" % s["test_limit"])
        return flags

    def one(self, seed, logs, policy_file):
        s = self.size
        workers = []
        for rank in range(3):
            flags = self.task_flags(seed) + ["--workers=4", "--rank=%d" % rank]
            if s.get("train_limit"):
                flags.append("--train_limit=%d" % s["train_limit"])
            if rank == 0:
                flags.append("--eval")
            workers.append(("fashion10-%d" % rank, flags))
        workers.append(("upper2-3", self.task_flags(seed) + [
            "--workers=4", "--rank=3", "--task=upper2",
            "--train_limit=%d" % s["labels"], "--eval"]))
        # What the file's first matching line names, per tensor.
        declared = {}
        lines = [line.split(None, 1) for line in (policy_file or "").splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        for tensor in MIXED_TENSORS:
            for glob, text in lines:
                if fnmatch.fnmatchcase(tensor, glob):
                    declared[tensor] = text
                    break
        results = self.job(logs, workers, declared, policy_file=policy_file)
        return {"eval": results["fashion10-0"], "upper2": results["upper2-3"],
                "policy_problems": results["policy_problems"]}

    def alone(self, seed, logs):
        s = self.size
        log = self.runner.run_alone(logs, "upper2-alone", self.task_flags(
            seed) + ["--workers=4", "--rank=3", "--task=upper2",
                     "--train_limit=%d" % s["labels"]], s["timeout"])
        return {"eval": None, "upper2": log}

    def summary(self, result):
        parts = []
        if result["eval"]:
            parts.append("10-class %.4f" % result["eval"]["final"])
        parts.append("2-class %.4f" % result["upper2"]["final"])
        return ", ".join(parts)

    def report(self):
        rows = []
        for label, policy_file in MIXED + [("2-class model alone", None)]:
            runs = self.results.get(label, [])
            ten = [r["eval"]["final"] for r in runs if r["eval"]]
            two = [r["upper2"]["final"] for r in runs]
            policies = "; ".join(
                "`%s`" % " ".join(line.split())
                for line in (policy_file or "").splitlines()) or "-"
            rows.append([label, policies,
                         spread(ten, 4) if ten else "-",
                         spread(two, 4) + self.failed_note(label)])
        return ("3 workers train the 10-class model, 1 the 2-class model on "
                "%d labels; they share the hidden layer. Final test "
                "accuracies after %d rounds; weightd --policy_file lines "
                "(NAME_GLOB POLICY).\n\n" % (self.size["labels"],
                                              self.size["rounds"]) +
                table(["setting", "--policy_file", "10-class model",
                       "2-class model"], rows))

    def check(self):
        labels = [label for label, _ in MIXED] + ["2-class model alone"]
        problems = self.check_finished(labels)
        for label in labels:
            for r in self.results.get(label, []):
                if r["eval"] and not r["eval"]["final"] > 0.2:
                    problems.append(
                        "mixed: %s: the 10-class model should learn above "
                        "chance (> 0.2), got %.4f" % (label,
                                                      r["eval"]["final"]))
                # 60 % of Fashion-MNIST is not an upper-body garment.
                if not r["upper2"]["final"] > 0.65:
                    problems.append(
                        "mixed: %s: the 2-class model should beat the "
                        "majority class (> 0.65), got %.4f" % (
                            label, r["upper2"]["final"]))
        return problems


EXPERIMENTS = {e.name: e for e in (NonIid, Attack, Straggler, Mixed)}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("names", nargs="*", default=["all"],
                        help="experiments to run: %s, or all" %
                        ", ".join(EXPERIMENTS))
    parser.add_argument("--build", default="build/release",
                        help="build tree with server/weightd and "
                        "examples/weightd_worker")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each setting, seeds 1..N")
    parser.add_argument("--target", type=float, default=0.85,
                        help="test accuracy the 'to reach' columns time")
    parser.add_argument("--check", action="store_true",
                        help="assert each experiment's checks; exit 1 "
                        "naming those that failed")
    parser.add_argument("--out", default=None,
                        help="directory for logs and tables (default: "
                        "build/experiments/SIZE-TIME)")
    parser.add_argument("--only", action="append", default=[],
                        metavar="TEXT",
                        help="run only the settings whose name contains "
                        "TEXT (repeatable; e.g. --only 'alpha 0.1, FedAvg')")
    parser.add_argument("--cpu_lock", default=None,
                        help="flock this file around each run")
    args = parser.parse_args()
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    for name in names:
        if name not in EXPERIMENTS:
            parser.error("unknown experiment %s (use %s or all)" % (
                name, ", ".join(EXPERIMENTS)))
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    out = args.out or os.path.join(
        "build", "experiments",
        "%s-%s" % (args.size, time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(out, exist_ok=True)
    print("experiments: logs and tables go to %s" % out, flush=True)

    runner = Runner(args)

    def stop(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, stop)
    # Also when started in the background of a script, which ignores
    # SIGINT: Ctrl-C (or kill -INT) still stops every run.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    problems, everything = [], {}
    started = time.time()
    try:
        for name in names:
            experiment = EXPERIMENTS[name](runner, args, out)
            # No logs of an earlier run of it beside this run's.
            shutil.rmtree(experiment.out, ignore_errors=True)
            print("\n## %s (size %s, %d repeat(s))" % (
                name, args.size, args.repeats), flush=True)
            experiment.run_all()
            text = "## %s (--size=%s, %d repeat(s); mean (min-max))\n\n%s\n" % (
                name, args.size, args.repeats, experiment.report())
            print("\n" + text, flush=True)
            with open(os.path.join(out, name + ".md"), "w") as f:
                f.write(text)
            everything[name] = {"results": experiment.results,
                                "failures": experiment.failures,
                                "size": experiment.size}
            if args.check:
                found = experiment.check()
                for p in found:
                    print("FAILED check: " + p, flush=True)
                if not found:
                    print("%s: every check holds" % name,
                          flush=True)
                problems += found
    except KeyboardInterrupt:
        runner.kill_all()
        print("experiments: interrupted; every process started is stopped",
              file=sys.stderr)
        return 130
    finally:
        runner.kill_all()
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(everything, f, indent=1)
    print("experiments: %.0f s; tables in %s/*.md" % (time.time() - started,
                                                     out))
    if args.check and problems:
        print("experiments: %d check(s) failed" % len(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

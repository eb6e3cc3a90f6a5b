"""The Python examples (examples/python/), run for real at reduced size
against this tree's daemon: they must learn, share what they say they share
bit for bit, and stop every process they started.

Run: PYTEST_WEIGHTD_BUILD=build/release PYTHONPATH=build/release/python \
     /usr/bin/python3 -m pytest examples/python/tests
(ctest runs it as python_examples_test, label python.)
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

BUILD = pathlib.Path(os.environ.get("PYTEST_WEIGHTD_BUILD", "build/release"))
EXAMPLES = pathlib.Path(__file__).resolve().parents[1]


def run(args, timeout):
    """Runs an example to completion (bounded); returns its stdout."""
    result = subprocess.run(
        [sys.executable, *map(str, args)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def logs():
    with tempfile.TemporaryDirectory() as work:
        yield pathlib.Path(work)


@pytest.fixture
def server(logs):
    """A weightd on 127.0.0.1:0; yields its address."""
    ready = logs / "ready"
    # No preexec_fn: a forked gRPC process can hang (shared/FACTS.md).
    proc = subprocess.Popen(
        ["setpriv", "--pdeathsig", "KILL", str(BUILD / "server/weightd"),
         "--listen=127.0.0.1:0", f"--ready_file={ready}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "weightd exited at start"
        time.sleep(0.05)
    assert ready.exists(), "weightd did not start within 10 s"
    yield ready.read_text().strip()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_share_numpy_two_processes_average_their_weights(server):
    script = EXAMPLES / "share_numpy.py"
    procs = [subprocess.Popen(
        [sys.executable, str(script), f"--address={server}", f"--rank={rank}",
         "--rounds=3", "--steps=30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    # After every round both hold the same weights: the same accuracy on
    # the same test set, and in the end the same bytes.
    accuracies = [re.findall(r"round \d+: test accuracy ([0-9.]+)", out)
                  for out, _ in outputs]
    assert len(accuracies[0]) == 3
    assert accuracies[0] == accuracies[1]
    digests = [re.search(r"weights sha256 (\w+)", out).group(1)
               for out, _ in outputs]
    assert digests[0] == digests[1]
    # A softmax regression after 2 x 90 steps of 100 images: about 0.78.
    assert float(accuracies[0][-1]) >= 0.70


def test_fedavg_cnn_four_workers_learn_the_same_model(logs):
    # 6 rounds of 30 steps per worker (46080 samples in all, under one epoch):
    # the full run (36 rounds of 60) reaches >= 0.90; this one about 0.82.
    out = run([EXAMPLES / "fedavg_cnn.py", f"--build={BUILD}", f"--logs={logs}",
               "--workers=4", "--rounds=6", "--local_steps=30"], timeout=240)
    lines = out.splitlines()
    assert len([l for l in lines if l.startswith("round ")]) == 6
    final = float(re.fullmatch(r"final test accuracy: ([0-9.]+)",
                               lines[-1]).group(1))
    assert final >= 0.75
    results = [json.loads((logs / f"worker-{r}.json").read_text())
               for r in range(4)]
    # Every parameter is shared and the last step averaged them: all four
    # workers end with bit-identical models.
    assert len({r["parameters_sha256"] for r in results}) == 1
    assert results[0]["accuracy"] == final


def test_fedavg_cnn_declares_its_policy_on_label_skewed_shards(logs):
    out = run([EXAMPLES / "fedavg_cnn.py", f"--build={BUILD}", f"--logs={logs}",
               "--workers=2", "--rounds=2", "--local_steps=5",
               "--dirichlet_alpha=0.1",
               "--policy=optimizer=momentum lr=1 momentum=0.5"], timeout=120)
    assert len([l for l in out.splitlines() if l.startswith("round ")]) == 2
    # The first worker's Join created every parameter under the policy.
    created = re.findall(r'created (\d+) tensor\(s\) \(fedavg/.*\) with '
                         r'policy "([^"]*)"',
                         (logs / "weightd.log").read_text())
    assert len(created) == 1 and created[0][0] == "8", created
    assert "optimizer=momentum" in created[0][1].split()
    assert "momentum=0.5" in created[0][1].split()
    # Both workers pulled the server's step: the same model.
    results = [json.loads((logs / f"worker-{r}.json").read_text())
               for r in range(2)]
    assert results[0]["parameters_sha256"] == results[1]["parameters_sha256"]


def test_cnn_rnn_share_shares_only_the_named_layers(logs):
    out = run([EXAMPLES / "cnn_rnn_share.py", f"--build={BUILD}",
               f"--logs={logs}", "--rounds=4", "--steps=25",
               "--cnn_labels=4000", "--rnn_labels=500", "--test_limit=2000"],
              timeout=240)
    result = {(m, phase): json.loads((logs / f"{m}-{phase}.json").read_text())
              for m in ("cnn", "gru") for phase in ("shared", "alone")}
    # Two different architectures hold bit-identical rows/* and head/*
    # after the last round; trained alone, they do not.
    assert (result["cnn", "shared"]["shared_sha256"] ==
            result["gru", "shared"]["shared_sha256"])
    assert (result["cnn", "alone"]["shared_sha256"] !=
            result["gru", "alone"]["shared_sha256"])
    # Both learn, shared or not (10 classes: chance is 0.1). At this size the
    # CNN reaches about 0.75 and the GRU about 0.6.
    for key, r in result.items():
        assert r["accuracy"] >= 0.45, (key, r)
    printed = re.findall(r"test accuracy ([0-9.]+)\s+alone: ([0-9.]+)", out)
    assert printed == [
        (f"{result[m, 'shared']['accuracy']:.4f}",
         f"{result[m, 'alone']['accuracy']:.4f}") for m in ("cnn", "gru")]


def readline_within(stream, timeout):
    """The next line of ``stream``, which must come within ``timeout`` s."""
    line = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    assert line, f"no line within {timeout} s"
    return line[0]


def processes_naming(text):
    """Pids of the processes whose command line contains ``text``."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (
                    entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass  # It exited meanwhile.
    return pids


@pytest.mark.parametrize("whom", ["launcher", "process group"])
def test_ctrl_c_stops_the_launcher_and_every_child(logs, whom):
    # Ctrl-C in a terminal signals the whole process group; SIGINT to the
    # launcher alone must stop its children too.
    launcher = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "fedavg_cnn.py"), f"--build={BUILD}",
         f"--logs={logs}", "--workers=2", "--rounds=1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        # Training is under way once worker 0 prints its first round.
        first = readline_within(launcher.stdout, timeout=120)
        assert first.startswith("round "), launcher.stderr.read()
        # The launcher, weightd and 2 workers name the log directory.
        assert len(processes_naming(str(logs))) == 4
        started = time.monotonic()
        if whom == "launcher":
            launcher.send_signal(signal.SIGINT)
        else:
            os.killpg(launcher.pid, signal.SIGINT)
        assert launcher.wait(timeout=10) == 130
        assert time.monotonic() - started < 10
        assert processes_naming(str(logs)) == []
        assert "interrupted" in launcher.stderr.read()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()

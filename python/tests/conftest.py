"""Fixtures for the weightd package's tests: real daemons on 127.0.0.1:0 and
Python worker processes, each bounded in time and cleaned up.

Run: cd build/release && PYTHONPATH=python PYTEST_WEIGHTD_BUILD=$PWD \
     /usr/bin/python3 -m pytest -q -p no:cacheprovider ../../python/tests
(PYTEST_WEIGHTD_BUILD: a build tree with the daemon and the package's
native part; PYTHONPATH: its python/ directory.)
"""

import contextlib
import gc
import json
import os
import pathlib
import queue
import signal
import subprocess
import tempfile
import textwrap
import threading
import time

import pytest

import weightd

BUILD = pathlib.Path(os.environ.get("PYTEST_WEIGHTD_BUILD", "build/release"))
PYTHON = "/usr/bin/python3"  # Debian's: numpy, torch (shared/FACTS.md).
# Where `import weightd` found the package: worker processes get it too.
PACKAGE_ROOT = str(pathlib.Path(weightd.__file__).resolve().parent.parent)


@contextlib.contextmanager
def weightd_daemon(*flags, lease_timeout="3s", listen="127.0.0.1:0"):
    """A weightd on `listen` with `flags`; yields (address, process).
    Stopped with SIGTERM afterwards, which must exit 0 within 15 s."""
    with tempfile.TemporaryDirectory() as work:
        ready = pathlib.Path(work, "ready")
        log = open(pathlib.Path(work, "log"), "w")
        # No preexec_fn: a forked gRPC process can hang (shared/FACTS.md).
        # --pdeathsig: a killed pytest leaves no daemon behind.
        proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", str(BUILD / "server/weightd"),
             f"--listen={listen}", f"--ready_file={ready}",
             f"--lease_timeout={lease_timeout}", *flags],
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            # The daemon writes the file (by rename) once it serves.
            deadline = time.monotonic() + 10
            while not ready.exists() and time.monotonic() < deadline:
                assert proc.poll() is None, (
                    "weightd exited at start: " +
                    pathlib.Path(work, "log").read_text())
                time.sleep(0.02)
            assert ready.exists(), "weightd did not start within 10 s"
            yield ready.read_text().strip(), proc
        finally:
            # Clients the test left in reference cycles (pytest.raises
            # keeps a traceback of the test's frame) are destroyed first:
            # the daemon drains a connected client for --shutdown_grace.
            gc.collect()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    code = "killed after 15 s"
            else:
                code = proc.returncode
            log.close()
        assert code == 0, f"weightd exit status {code}"


@pytest.fixture
def server():
    """A weightd on 127.0.0.1:0 (3 s leases); yields its address."""
    with weightd_daemon() as (address, _):
        yield address


@pytest.fixture
def daemon():
    """Starts weightds with chosen flags: daemon(*flags, lease_timeout=,
    listen=)
    returns (address, process); each is stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda *flags, **kw: stack.enter_context(
            weightd_daemon(*flags, **kw))


class Worker:
    """A Python process running `code` (with `args` as sys.argv[1:]). Its
    standard output is read line by line on a thread of its own, so that
    every wait for a line has a timeout."""

    def __init__(self, code, *args, env=None):
        environment = dict(os.environ, **(env or {}))
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (PACKAGE_ROOT, environment.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", PYTHON, "-c",
             textwrap.dedent(code), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=environment)
        self.lines = queue.Queue()        # Standard output, line by line.
        self.error_lines = queue.Queue()  # Standard error, line by line.
        self.stderr = []                  # Standard error so far.
        self._readers = [
            threading.Thread(target=self._read,
                             args=(self.proc.stdout, self.lines, None)),
            threading.Thread(target=self._read,
                             args=(self.proc.stderr, self.error_lines,
                                   self.stderr))]
        for r in self._readers:
            r.daemon = True
            r.start()

    @staticmethod
    def _read(stream, lines, keep):
        for line in stream:
            if keep is not None:
                keep.append(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
        lines.put(None)  # End of output.

    def line(self, timeout, stream="stdout"):
        """The next line of standard output (or error); fails after
        `timeout` seconds or at the end of the output."""
        lines = self.lines if stream == "stdout" else self.error_lines
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"worker wrote no line within {timeout} s; "
                        f"stderr: {self.err()}")
        if line is None:
            lines.put(None)
            pytest.fail(f"worker ended (status {self.proc.wait(5)}); "
                        f"stderr: {self.err()}")
        return line

    def expect(self, text, timeout, stream="stdout"):
        """Skips lines until one starting with `text` (or, on standard
        error, containing it); returns the rest of a line of standard
        output (parsed as JSON if it is), or the whole line of standard
        error."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.0, deadline - time.monotonic()), stream)
            if stream != "stdout":
                if text in line:
                    return line
                continue
            if line.startswith(text):
                rest = line[len(text):].strip()
                try:
                    return json.loads(rest)
                except ValueError:
                    return rest

    def wait(self, timeout):
        """The exit status, within `timeout` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not exit within {timeout} s; "
                        f"stderr: {self.err()}")

    def err(self):
        for r in self._readers[1:]:
            if self.proc.poll() is not None:
                r.join(timeout=2)
        return "\n".join(self.stderr)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for r in self._readers:
            r.join(timeout=5)


@pytest.fixture
def spawn():
    """spawn(code, *args) -> Worker; every worker is killed after the test."""
    workers = []

    def start(code, *args, **kw):
        workers.append(Worker(code, *args, **kw))
        return workers[-1]

    yield start
    for w in workers:
        w.kill()

"""Runs a weightd job on this machine for the Python examples: a daemon (or
one already running) and worker processes, all stopped on exit.

    with local_job.Job(build="build/release") as job:
        workers = [job.start(f"worker-{r}", [sys.executable, script, ...])
                   for r in range(4)]
        job.wait(workers, timeout=900)

Children are started through ``setpriv --pdeathsig KILL`` (without
``preexec_fn``, which forks and can hang a gRPC process: shared/FACTS.md),
so they die with this process even if it is killed. Leaving the ``with``
block, normally or on an error or Ctrl-C, sends SIGTERM to every child
still running and SIGKILL to any still there 5 s later. Imports nothing
heavy: the launcher itself never loads torch or weightd.
"""

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_BUILD = REPO / "build" / "release"


class JobFailed(Exception):
    """A process of the job failed, or the job ran out of time."""


class Job:
    """A local weightd job. ``address``: use this running daemon instead of
    starting one. ``build``: the build tree with ``server/weightd`` and
    ``python/weightd`` (added to the children's PYTHONPATH). ``logs``: the
    directory for the daemon's log and the workers' result files (default: a
    new temporary directory, kept)."""

    def __init__(self, address=None, build=DEFAULT_BUILD, logs=None,
                 daemon_flags=()):
        self.build = pathlib.Path(build)
        self.logs = pathlib.Path(logs or tempfile.mkdtemp(prefix="weightd-"))
        self.logs.mkdir(parents=True, exist_ok=True)
        self._procs = []
        self._daemon = None
        self._daemon_flags = list(daemon_flags)
        self.address = address

    def __enter__(self):
        # SIGTERM (e.g. from a test's timeout) unwinds like Ctrl-C does.
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            if self.address is None:
                self.address = self._start_daemon()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc):
        running = [p for p in self._procs if p.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        signal.signal(signal.SIGTERM, self._old_sigterm)

    def start(self, name, argv, stdout=None):
        """Starts ``argv`` as process ``name``; its standard output goes to
        ``stdout`` (default: ours), its standard error to ours."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.build / "python"), env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", *map(str, argv)],
            stdout=stdout, env=env)
        proc.name = name
        self._procs.append(proc)
        return proc

    def wait(self, procs, timeout):
        """Waits until every process of ``procs`` has exited, at most
        ``timeout`` seconds. Raises JobFailed as soon as one of them (or
        the daemon) fails."""
        deadline = time.monotonic() + timeout
        pending = list(procs)
        while pending:
            for proc in [self._daemon, *pending]:
                if proc is None:
                    continue
                status = proc.poll()
                if proc is self._daemon and status is not None:
                    raise JobFailed(f"weightd exited ({status}) during the "
                                    f"job; see {self.logs / 'weightd.log'}")
                if status is not None and status != 0:
                    raise JobFailed(f"{proc.name} failed (exit status "
                                    f"{status})")
            pending = [p for p in pending if p.returncode is None]
            if not pending:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobFailed(
                    f"{', '.join(p.name for p in pending)} still running "
                    f"after {timeout:.0f} s")
            try:  # Checks every process at least twice a second.
                pending[0].wait(timeout=min(left, 0.5))
            except subprocess.TimeoutExpired:
                pass

    def _start_daemon(self):
        weightd = self.build / "server" / "weightd"
        if not os.access(weightd, os.X_OK):
            raise JobFailed(f"{weightd} is missing: build first "
                            "(scripts/build.sh build/release "
                            "-DWEIGHTD_BUILD_PYTHON=ON) or pass --address")
        ready = self.logs / "ready"
        ready.unlink(missing_ok=True)
        with open(self.logs / "weightd.log", "wb") as log:
            self._daemon = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", str(weightd),
                 "--listen=127.0.0.1:0", f"--ready_file={ready}",
                 *self._daemon_flags],
                stdout=log, stderr=subprocess.STDOUT)
        self._daemon.name = "weightd"
        self._procs.append(self._daemon)
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text().strip()):
            if self._daemon.poll() is not None:
                raise JobFailed(f"weightd exited at start; see "
                                f"{self.logs / 'weightd.log'}")
            if time.monotonic() > deadline:
                raise JobFailed("weightd did not become ready within 30 s")
            time.sleep(0.05)
        return ready.read_text().strip()


def run_main(program, main):
    """Runs ``main()`` as ``program``'s entry point: Ctrl-C (or SIGTERM)
    exits 130 and a failed job exits 1, each with one line that says so."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        sys.exit(130)
    except JobFailed as e:
        print(f"{program}: {e}", file=sys.stderr)
        sys.exit(1)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")

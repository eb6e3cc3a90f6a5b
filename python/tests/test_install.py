"""`pip install ./python` into a fresh virtual environment (Debian's
interpreter, --system-site-packages, no package index), then one round
against a real daemon from a process that sees only the installed package."""

import os
import pathlib
import subprocess
import sys
import textwrap

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]

ROUND = textwrap.dedent("""
    import sys
    import numpy as np
    import weightd
    print(weightd.__file__)
    w = np.array([1.0, 3.0], np.float32)
    with weightd.Client(sys.argv[1], worker_id="installed") as ps:
        ps.join({"pip/w": w})
        ps.push_pull({"pip/w": w}, weight=2.0)
        assert ps.version("pip/w") == 1, ps.version("pip/w")
    print("round ok", w.tolist())
""")


def test_pip_install_into_a_venv(server, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages",
                    str(venv)], check=True, timeout=120)
    # No PYTHONPATH: the installed package, not the build tree's.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_NO_INDEX"] = "1"  # Offline: nothing may come from an index.
    install = subprocess.run(
        [str(venv / "bin/pip"), "install", "--no-index", str(PYTHON_DIR)],
        env=env, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout + install.stderr
    assert "Successfully installed weightd" in install.stdout

    run = subprocess.run([str(venv / "bin/python"), "-c", ROUND, server],
                         env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    location, result = run.stdout.splitlines()[-2:]
    assert location.startswith(str(venv)), location
    assert result == "round ok [1.0, 3.0]"

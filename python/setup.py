"""pip install ./python: builds the package's native part with CMake from
this source tree (no package index needed: Debian's setuptools, wheel,
CMake, Ninja, pybind11-dev and the gRPC/protobuf/Abseil -dev packages that
scripts/install_deps.sh installs), then installs the ``weightd`` package.

The CMake tree is build/release at the repository's top if
scripts/build.sh configured it with the Python part (as scripts/test.sh
does), else build/pip; a second install rebuilds only what changed. Use Debian's interpreter: in a virtual
environment, create it with ``/usr/bin/python3 -m venv
--system-site-packages`` so that numpy (and torch) are found.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def version() -> str:
    """The project's version: the one CMakeLists.txt declares."""
    text = (ROOT / "CMakeLists.txt").read_text()
    return re.search(r"project\(weightd VERSION ([0-9.]+)", text).group(1)


def build_tree() -> pathlib.Path:
    """build/release if it builds the Python part, else build/pip."""
    release = ROOT / "build" / "release"
    cache = release / "CMakeCache.txt"
    if cache.exists() and "WEIGHTD_BUILD_PYTHON:BOOL=ON" in cache.read_text():
        return release
    return ROOT / "build" / "pip"


class CMakeBuild(build_ext):
    """Builds the _weightd target of the top-level CMake project."""

    def build_extension(self, ext: Extension) -> None:
        build = build_tree()
        if not (build / "build.ninja").exists():
            self._run(["cmake", "-S", str(ROOT), "-B", str(build), "-G",
                       "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                       "-DWEIGHTD_BUILD_PYTHON=ON",
                       "-DWEIGHTD_BUILD_TESTS=OFF",
                       "-DWEIGHTD_BUILD_EXAMPLES=OFF",
                       f"-DPython3_EXECUTABLE={sys.executable}"])
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")
        self._run(["cmake", "--build", str(build), "--target", "_weightd",
                   "-j", jobs])
        built = list((build / "python" / "weightd").glob("_weightd*.so"))
        if len(built) != 1:
            sys.exit(f"weightd: expected one _weightd*.so in {build}/python/"
                     f"weightd, found {[p.name for p in built]}")
        target = pathlib.Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[0], target)

    @staticmethod
    def _run(argv) -> None:
        print("weightd:", " ".join(argv), flush=True)
        try:
            subprocess.run(argv, check=True)
        except FileNotFoundError:
            sys.exit(f"weightd: {argv[0]} not found; run "
                     "scripts/install_deps.sh build grpc test first")
        except subprocess.CalledProcessError as error:
            sys.exit(f"weightd: {argv[0]} failed (exit {error.returncode}); "
                     "missing packages? run scripts/install_deps.sh")


setup(
    name="weightd",
    version=version(),
    description="Client of the weightd parameter server (numpy and PyTorch)",
    packages=["weightd"],
    ext_modules=[Extension("weightd._weightd", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["numpy"],
    zip_safe=False,
)

"""Packaging: `make wheel`'s wheel pins the torch it was compiled against and works when pip
installs it into a fresh virtual environment.

The fresh venv gets the current environment's torch (and its dependencies) through a .pth file
pointing at a folder of links to this site-packages *minus structops*, so pip sees torch as
installed and checks the pin against it, and `import structops` can only find the wheel.  The
wheel build reuses the build directory of `make build` (it only re-links)."""

import glob
import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.packaging


def _build_dir():
    # the Makefile's editable build dir (same CMake configuration: the wheel build is incremental)
    return os.path.join(ROOT, "build", "dev")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if not os.path.exists(os.path.join(_build_dir(), "CMakeCache.txt")):
        pytest.skip("needs the build dir of `make build` (build/dev) to build the wheel incrementally")
    out = tmp_path_factory.mktemp("dist")
    import structops

    cuda = "ON" if structops.build_info()["with_cuda"] else "OFF"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", ROOT, "-w", str(out),
           f"-Cbuild-dir={_build_dir()}", f"-Ccmake.define.STRUCTOPS_CUDA={cuda}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,) = glob.glob(str(out / "structops-*.whl"))
    return whl


def test_wheel_pins_the_torch_it_was_built_against(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    major, minor = torch.__version__.split(".")[:2]
    reqs = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    torch_reqs = [r for r in reqs if r.startswith("torch")]
    assert torch_reqs == [f"torch=={major}.{minor}.*"], reqs


def test_wheel_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch & co. from this environment, without structops (links, no copies)
    here = sysconfig.get_paths()["purelib"]
    shadow = tmp_path / "deps"
    shadow.mkdir()
    for name in os.listdir(here):
        low = name.lower()
        if low.startswith(("structops", "_structops", "__editable__")) or low.endswith(".pth"):
            continue
        os.symlink(os.path.join(here, name), shadow / name)
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(str(shadow) + "\n")
    # pip of this environment installs into the fresh one (--python), checking the torch pin
    r = subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "--no-index", "--no-cache-dir", wheel],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    smoke = (
        "import structops, torch, os; "
        "assert os.path.dirname(structops.__file__).startswith(os.environ['FRESH']), structops.__file__; "
        "x = torch.randn(5, 16, dtype=torch.float64); w1 = torch.randn(4, 4, 4, dtype=torch.float64); "
        "w2 = torch.randn(4, 4, 4, dtype=torch.float64); "
        "y = structops.monarch_matmul(x, w1, w2); "
        "assert torch.allclose(y, structops.reference.monarch_matmul(x, w1, w2)); "
        "print('ok', structops.__version__, structops.build_info()['torch_version'])"
    )
    env = dict(os.environ, FRESH=site)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([py, "-c", smoke], capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr

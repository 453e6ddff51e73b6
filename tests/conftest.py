"""Shared pytest setup: per-test seeding, the `cuda` marker skip, helpers."""

import os

import pytest
import torch


def pytest_report_header(config):
    import structops

    info = structops.build_info()
    return (f"structops {info['version']}: CPU kernels {info['cpu_isa_in_use']} "
            f"(STRUCTOPS_CPU_ISA={os.environ.get('STRUCTOPS_CPU_ISA', '<unset>')}, available "
            f"{info['cpu_isas_available']}), CUDA build {info['with_cuda']}")


@pytest.fixture(autouse=True, scope="session")
def _forced_isa_is_in_use():
    """`make test` runs the suite once per CPU variant: a forced variant must really be used."""
    import structops

    want = os.environ.get("STRUCTOPS_CPU_ISA")
    if want and want in structops.build_info()["cpu_isas_available"].split(","):
        assert structops.build_info()["cpu_isa_in_use"] == want, (want, structops.build_info())
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False); "
                                   "scripts/gpu_check.sh runs these on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cpu_isa(request):
    """Run a test body under a forced CPU kernel variant (STRUCTOPS_CPU_ISA)."""
    old = os.environ.get("STRUCTOPS_CPU_ISA")

    def set_isa(name):
        os.environ["STRUCTOPS_CPU_ISA"] = name

    yield set_isa
    if old is None:
        os.environ.pop("STRUCTOPS_CPU_ISA", None)
    else:
        os.environ["STRUCTOPS_CPU_ISA"] = old


def available_isas():
    import structops

    return structops.build_info()["cpu_isas_available"].split(",")


# Per-test time limit for the GPU machine (scripts/gpu_check.sh sets STRUCTOPS_TEST_TIMEOUT=s):
# a hung kernel must not eat the whole device budget.  SIGALRM-based, so no plugin is needed
# (the GPU machine cannot install one); a no-op when the variable is unset.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = int(os.environ.get("STRUCTOPS_TEST_TIMEOUT", "0") or 0)
    if limit <= 0:
        yield
        return
    import signal

    def on_alarm(signum, frame):
        raise TimeoutError(f"{item.nodeid} exceeded STRUCTOPS_TEST_TIMEOUT={limit} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)

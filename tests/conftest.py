"""Shared pytest setup: per-test seeding, the `cuda` marker skip, helpers."""

import os

import pytest
import torch


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

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
    _deselect_variant_independent(config, items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False); "
                                   "scripts/gpu_check.sh runs these on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# ---- which tests can depend on the CPU kernel variant ----------------------------------------
# `make test` runs the suite once per compiled CPU kernel variant (STRUCTOPS_CPU_ISA).  A test that
# never calls an ISA-variant kernel (structops._C.cpu_variant_kernel_calls() counts every call, in
# every family) cannot change its result with the variant, so running it again only costs CI time.
# The first pass records, per test, the kernel calls made while it ran (setup, call, teardown) and
# per fixture of wider scope the calls made while it was set up (its value is shared by later
# tests); STRUCTOPS_TEST_VARIANT_RECORD names the JSON file.  Later passes read it
# (STRUCTOPS_TEST_VARIANT_ONLY) and deselect a test only if it made no such call and uses no
# fixture that did; a test the record does not know runs.
_VARIANT_RECORD = os.environ.get("STRUCTOPS_TEST_VARIANT_RECORD")
_VARIANT_ONLY = os.environ.get("STRUCTOPS_TEST_VARIANT_ONLY")
_variant_tests = {}
_variant_fixtures = {}


def _variant_calls():
    import structops._C as _C

    return _C.cpu_variant_kernel_calls()


def _fixture_key(fixturedef):
    return f"{fixturedef.baseid}::{fixturedef.argname}"


def _wide_fixture_keys(item):
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    keys = []
    for defs in info.name2fixturedefs.values():
        for fixturedef in defs:
            if fixturedef.scope != "function":
                keys.append(_fixture_key(fixturedef))
    return keys


if _VARIANT_RECORD:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        before = _variant_calls()
        yield
        _variant_tests[item.nodeid] = {"calls": _variant_calls() - before,
                                       "fixtures": _wide_fixture_keys(item)}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(fixturedef, request):
        before = _variant_calls()
        yield
        if fixturedef.scope != "function":
            key = _fixture_key(fixturedef)
            _variant_fixtures[key] = _variant_fixtures.get(key, 0) + _variant_calls() - before

    def pytest_sessionfinish(session, exitstatus):
        import json

        with open(_VARIANT_RECORD, "w") as f:
            json.dump({"tests": _variant_tests, "fixtures": _variant_fixtures}, f, indent=0,
                      sort_keys=True)


def _deselect_variant_independent(config, items):
    if not _VARIANT_ONLY:
        return
    import json

    try:
        with open(_VARIANT_ONLY) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise pytest.UsageError(f"STRUCTOPS_TEST_VARIANT_ONLY={_VARIANT_ONLY!r}: cannot read the "
                                f"first pass's record ({e})") from e
    tests, fixtures = record["tests"], record["fixtures"]

    def independent(item):
        seen = tests.get(item.nodeid)
        return (seen is not None and seen["calls"] == 0
                and all(fixtures.get(k, 0) == 0 for k in seen["fixtures"]))

    drop = [item for item in items if independent(item)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if not independent(item)]
        config._structops_variant_deselected = len(drop)


def pytest_report_collectionfinish(config, start_path, items):
    n = getattr(config, "_structops_variant_deselected", 0)
    if n:
        return (f"{n} tests deselected: the first pass saw them call no ISA-variant CPU kernel "
                f"(record {_VARIANT_ONLY}), so this variant cannot change their results")
    return None


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

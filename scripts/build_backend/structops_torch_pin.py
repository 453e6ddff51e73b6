"""scikit-build-core metadata provider: the wheel's dependencies, with torch pinned to the
minor version the extension is compiled against.

The compiled `_C` links libtorch/libc10 and uses their C++ ABI, which changes between torch
minor releases: a wheel built against torch 2.14 must not be installed next to 2.13 or 2.15.
Builds run with --no-build-isolation (the Makefile, DESIGN §5), so the torch imported here is
the one CMake compiles against.  Configured in pyproject.toml
([tool.scikit-build.metadata.dependencies]).
"""

from __future__ import annotations

import re

RUNTIME = ["numpy"]


def dynamic_metadata(field, settings=None, project=None):
    if field != "dependencies":
        raise ValueError(f"structops_torch_pin provides 'dependencies', not {field!r}")
    try:
        import torch
    except ImportError as e:  # pragma: no cover - the build fails the same way in CMake
        raise RuntimeError(
            "structops: building needs torch installed in the build environment; install torch first and "
            "build with `pip install --no-build-isolation` (the Makefile does)"
        ) from e
    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    if not m:
        raise RuntimeError(f"structops: cannot parse torch.__version__ {torch.__version__!r}")
    return [f"torch=={m.group(1)}.{m.group(2)}.*", *RUNTIME]

// The `structops._C` Python module.  Importing it runs the static TORCH_LIBRARY registrations of
// this shared object (the operators are then reachable as torch.ops.structops.*).  It exposes
// build information only — nothing tensor-shaped goes through pybind11.
#include <pybind11/pybind11.h>

#include "structops/monarch.h"

#ifndef STRUCTOPS_CUDA_ARCHS
#define STRUCTOPS_CUDA_ARCHS ""
#endif
#ifndef STRUCTOPS_CUTLASS_VERSION
#define STRUCTOPS_CUTLASS_VERSION ""
#endif
#ifndef STRUCTOPS_BUILT_CUDA_VERSION
#define STRUCTOPS_BUILT_CUDA_VERSION ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "structops compiled extension (operators are registered under torch.ops.structops)";
#ifdef STRUCTOPS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("build_info", [] {
    py::dict d;
    d["version"] = STRUCTOPS_VERSION;
    d["torch_version"] = STRUCTOPS_BUILT_TORCH_VERSION;
#ifdef STRUCTOPS_WITH_CUDA
    d["with_cuda"] = true;
#else
    d["with_cuda"] = false;
#endif
    d["cuda_version"] = STRUCTOPS_BUILT_CUDA_VERSION;
    d["cuda_archs"] = STRUCTOPS_CUDA_ARCHS;
    d["cutlass_version"] = STRUCTOPS_CUTLASS_VERSION;
    d["cpu_isas_compiled"] = STRUCTOPS_CPU_ISAS;
    d["cpu_isas_available"] = structops::monarch_cpu_available_isas();
    return d;
  }, "Versions, CUDA archs and CPU instruction-set variants this build contains.");
  m.def("cpu_isa", [] { return std::string(structops::monarch_cpu_isa()); },
        "CPU kernel variant in use now (honours the STRUCTOPS_CPU_ISA environment variable).");
  m.def("cpu_variant_kernel_calls", [] { return structops::cpu_variant_kernel_calls(); },
        "Calls of ISA-variant CPU kernels since the library loaded (the test suite uses it to "
        "find the tests whose results can depend on the variant).");
}

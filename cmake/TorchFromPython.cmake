# Locate the torch installed in the *current* Python (scikit-build-core runs CMake with the
# interpreter of the venv because we build with --no-build-isolation).
#
# We deliberately do not use find_package(Torch): on CUDA 13 toolkits assembled from pip wheels
# its legacy FindCUDA logic fails or injects sm_50 gencodes that nvcc 13 rejects, and it links
# libraries we do not need (see ../shared/reference/toolchain.md, pitfalls 1, 2, 5).
#
# Defines:
#   STRUCTOPS_TORCH_VERSION, STRUCTOPS_TORCH_CUDA_VERSION ("" for CPU-only torch)
#   structops::torch       INTERFACE target: headers + libtorch_cpu + libc10 + ABI define
#   structops::torch_cuda  INTERFACE target (only if torch has CUDA): + libc10_cuda

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c [=[
import os, torch
root = os.path.dirname(torch.__file__)
print(torch.__version__)
print(torch.version.cuda or "")
print(os.path.join(root, "include") + ";" + os.path.join(root, "include", "torch", "csrc", "api", "include"))
print(os.path.join(root, "lib"))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
]=]
  OUTPUT_VARIABLE _structops_torch_info
  ERROR_VARIABLE _structops_torch_err
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _structops_torch_rc)
if(NOT _structops_torch_rc EQUAL 0)
  message(FATAL_ERROR
    "structops: could not import torch with ${Python_EXECUTABLE}:\n${_structops_torch_err}\n"
    "Install torch first and build with `pip install --no-build-isolation ...` "
    "(or simply run `make build`).")
endif()
string(REPLACE "\n" ";" _structops_torch_lines "${_structops_torch_info}")
list(GET _structops_torch_lines 0 STRUCTOPS_TORCH_VERSION)
list(GET _structops_torch_lines 1 STRUCTOPS_TORCH_CUDA_VERSION)
list(GET _structops_torch_lines 2 _inc0)
list(GET _structops_torch_lines 3 _inc1)
list(GET _structops_torch_lines 4 STRUCTOPS_TORCH_LIB_DIR)
list(GET _structops_torch_lines 5 STRUCTOPS_TORCH_CXX11_ABI)
# The CUDA version line may be empty, in which case list() dropped nothing but the element is "".
set(STRUCTOPS_TORCH_INCLUDE_DIRS "${_inc0};${_inc1}")
message(STATUS "structops: torch ${STRUCTOPS_TORCH_VERSION} (CUDA '${STRUCTOPS_TORCH_CUDA_VERSION}') at ${STRUCTOPS_TORCH_LIB_DIR}")

find_library(STRUCTOPS_C10_LIB c10 PATHS "${STRUCTOPS_TORCH_LIB_DIR}" NO_DEFAULT_PATH NO_CACHE REQUIRED)
find_library(STRUCTOPS_TORCH_CPU_LIB torch_cpu PATHS "${STRUCTOPS_TORCH_LIB_DIR}" NO_DEFAULT_PATH NO_CACHE REQUIRED)

add_library(structops_torch INTERFACE)
add_library(structops::torch ALIAS structops_torch)
target_include_directories(structops_torch SYSTEM INTERFACE ${STRUCTOPS_TORCH_INCLUDE_DIRS})
target_link_libraries(structops_torch INTERFACE "${STRUCTOPS_TORCH_CPU_LIB}" "${STRUCTOPS_C10_LIB}")
target_compile_definitions(structops_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${STRUCTOPS_TORCH_CXX11_ABI})

if(NOT STRUCTOPS_TORCH_CUDA_VERSION STREQUAL "")
  find_library(STRUCTOPS_C10_CUDA_LIB c10_cuda PATHS "${STRUCTOPS_TORCH_LIB_DIR}" NO_DEFAULT_PATH NO_CACHE)
endif()

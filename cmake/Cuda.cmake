# Decide whether to build the CUDA kernels.  STRUCTOPS_CUDA:
#   OFF  - CPU only.
#   AUTO - CUDA iff torch was built with CUDA *and* an nvcc is found (default).  Without the
#          Python module (standalone benchmarks) only nvcc is required.
#   ON   - like AUTO but a missing piece is a hard error (CI uses this so the CUDA
#          compile can never be skipped silently).
# Defines STRUCTOPS_WITH_CUDA (bool) and, when true, the imported target CUDA::cudart.

set(STRUCTOPS_WITH_CUDA OFF)
if(STRUCTOPS_CUDA STREQUAL "OFF")
  message(STATUS "structops: CUDA disabled (STRUCTOPS_CUDA=OFF)")
  return()
endif()

set(_why "")
if(STRUCTOPS_BUILD_PYTHON AND STRUCTOPS_TORCH_CUDA_VERSION STREQUAL "")
  set(_why "the installed torch ${STRUCTOPS_TORCH_VERSION} is a CPU-only build")
elseif(STRUCTOPS_BUILD_PYTHON AND NOT STRUCTOPS_C10_CUDA_LIB)
  set(_why "libc10_cuda was not found next to torch")
else()
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    set(_why "no CUDA compiler (nvcc) was found; set CUDACXX or put nvcc on PATH")
  endif()
endif()

if(NOT _why STREQUAL "")
  if(STRUCTOPS_CUDA STREQUAL "ON")
    message(FATAL_ERROR "structops: STRUCTOPS_CUDA=ON but ${_why}.")
  endif()
  message(STATUS "structops: building without CUDA: ${_why}")
  return()
endif()

# Must be set before enable_language.  "80;90a-real" = sm_80 SASS + PTX (JIT-able on newer
# GPUs) and sm_90a SASS (toolchain.md pitfall 10).
set(CMAKE_CUDA_ARCHITECTURES "${STRUCTOPS_CUDA_ARCHS}")
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
# We link the shared cudart ourselves: the Static default would embed a second runtime next to
# torch's libcudart.so.13, and "Shared" adds -lcudart which pip toolkits cannot satisfy (pitfall 7).
set(CMAKE_CUDA_RUNTIME_LIBRARY None)
enable_language(CUDA)

string(REGEX MATCH "^[0-9]+" _nvcc_major "${CMAKE_CUDA_COMPILER_VERSION}")
string(REGEX MATCH "^[0-9]+" _torch_cuda_major "${STRUCTOPS_TORCH_CUDA_VERSION}")
if(STRUCTOPS_BUILD_PYTHON AND NOT _nvcc_major STREQUAL _torch_cuda_major)
  message(FATAL_ERROR "structops: nvcc ${CMAKE_CUDA_COMPILER_VERSION} does not match the CUDA "
                      "major version of torch (${STRUCTOPS_TORCH_CUDA_VERSION}). Use an nvcc "
                      "${_torch_cuda_major}.x (set CUDACXX) or STRUCTOPS_CUDA=OFF.")
endif()

find_package(CUDAToolkit QUIET)
if(NOT TARGET CUDA::cudart)
  # pip-installed toolkits have only the versioned soname.
  set(_torch_nvidia "")
  if(STRUCTOPS_TORCH_LIB_DIR)
    set(_torch_nvidia "${STRUCTOPS_TORCH_LIB_DIR}/../../nvidia/cu${_nvcc_major}/lib")
  endif()
  find_library(STRUCTOPS_CUDART_LIB NAMES cudart libcudart.so.${_nvcc_major}
    HINTS "${CUDAToolkit_LIBRARY_DIR}" "${CMAKE_CUDA_COMPILER_TOOLKIT_ROOT}/lib64"
          "${CMAKE_CUDA_COMPILER_TOOLKIT_ROOT}/lib" ${_torch_nvidia}
    REQUIRED)
  add_library(CUDA::cudart SHARED IMPORTED)
  set_target_properties(CUDA::cudart PROPERTIES IMPORTED_LOCATION "${STRUCTOPS_CUDART_LIB}"
    INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CUDA_TOOLKIT_INCLUDE_DIRECTORIES}")
endif()

if(STRUCTOPS_BUILD_PYTHON)
  add_library(structops_torch_cuda INTERFACE)
  add_library(structops::torch_cuda ALIAS structops_torch_cuda)
  target_link_libraries(structops_torch_cuda INTERFACE structops::torch "${STRUCTOPS_C10_CUDA_LIB}" CUDA::cudart)
  target_compile_definitions(structops_torch_cuda INTERFACE STRUCTOPS_WITH_CUDA=1)
endif()

set(STRUCTOPS_WITH_CUDA ON)
message(STATUS "structops: building CUDA kernels with nvcc ${CMAKE_CUDA_COMPILER_VERSION} for archs ${STRUCTOPS_CUDA_ARCHS}")

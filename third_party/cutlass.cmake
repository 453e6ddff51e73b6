# How structops finds CUTLASS (header-only; no vendored copy).  First hit wins:
#   1. -DCUTLASS_INCLUDE_DIR=<dir containing cutlass/ and cute/>
#   2. environment variable CUTLASS_PATH=<CUTLASS checkout> (uses $CUTLASS_PATH/include)
#   3. the `nvidia-cutlass` wheel in the current Python, located with importlib WITHOUT importing
#      it (pip install --no-deps nvidia-cutlass==4.2.0.0: 40 MB of headers, no heavy deps).
# Required version: STRUCTOPS_CUTLASS_MIN_VERSION (checked against cutlass/version.h).
# Defines the INTERFACE target structops::cutlass.

set(STRUCTOPS_CUTLASS_MIN_VERSION "4.2.0")

if(NOT CUTLASS_INCLUDE_DIR AND DEFINED ENV{CUTLASS_PATH})
  set(CUTLASS_INCLUDE_DIR "$ENV{CUTLASS_PATH}/include")
endif()
if(NOT CUTLASS_INCLUDE_DIR)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import importlib.util as u, os; s = u.find_spec('cutlass_library'); print(os.path.join(s.submodule_search_locations[0], 'source', 'include') if s else '')"
    OUTPUT_VARIABLE CUTLASS_INCLUDE_DIR OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
if(NOT CUTLASS_INCLUDE_DIR OR NOT EXISTS "${CUTLASS_INCLUDE_DIR}/cutlass/version.h")
  message(FATAL_ERROR
    "structops: CUTLASS headers not found (needed for the CUDA kernels). Either\n"
    "  pip install --no-deps nvidia-cutlass==4.2.0.0\n"
    "or pass -DCUTLASS_INCLUDE_DIR=<path>/include, or set CUTLASS_PATH, or build with STRUCTOPS_CUDA=OFF.")
endif()

file(STRINGS "${CUTLASS_INCLUDE_DIR}/cutlass/version.h" _cutlass_ver_lines REGEX "#define CUTLASS_(MAJOR|MINOR|PATCH) ")
foreach(_l IN LISTS _cutlass_ver_lines)
  if(_l MATCHES "CUTLASS_MAJOR ([0-9]+)")
    set(_cm "${CMAKE_MATCH_1}")
  elseif(_l MATCHES "CUTLASS_MINOR ([0-9]+)")
    set(_cn "${CMAKE_MATCH_1}")
  elseif(_l MATCHES "CUTLASS_PATCH ([0-9]+)")
    set(_cp "${CMAKE_MATCH_1}")
  endif()
endforeach()
set(STRUCTOPS_CUTLASS_VERSION "${_cm}.${_cn}.${_cp}")
if(STRUCTOPS_CUTLASS_VERSION VERSION_LESS STRUCTOPS_CUTLASS_MIN_VERSION)
  message(FATAL_ERROR "structops: CUTLASS ${STRUCTOPS_CUTLASS_VERSION} at ${CUTLASS_INCLUDE_DIR} is older than the required ${STRUCTOPS_CUTLASS_MIN_VERSION}")
endif()
message(STATUS "structops: CUTLASS ${STRUCTOPS_CUTLASS_VERSION} headers at ${CUTLASS_INCLUDE_DIR}")

add_library(structops_cutlass INTERFACE)
add_library(structops::cutlass ALIAS structops_cutlass)
target_include_directories(structops_cutlass SYSTEM INTERFACE "${CUTLASS_INCLUDE_DIR}")
target_compile_definitions(structops_cutlass INTERFACE CUTLASS_ENABLE_TENSOR_CORE_MMA=1 CUTLASS_DEBUG_TRACE_LEVEL=0)

// avx512 variant of the sparse (SLTrain) CPU kernels (512-bit vectors; flags set in CMakeLists.txt).
#define STRUCTOPS_ISA_NS avx512
#define STRUCTOPS_VEC_BYTES 64
#include "sparse_lowrank_cpu_kernels.inc"

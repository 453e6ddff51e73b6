// avx2 variant of the sparse (SLTrain) CPU kernels (256-bit vectors; flags set in CMakeLists.txt).
#define STRUCTOPS_ISA_NS avx2
#define STRUCTOPS_VEC_BYTES 32
#include "sparse_lowrank_cpu_kernels.inc"

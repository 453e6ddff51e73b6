// generic variant of the sparse (SLTrain) CPU kernels (128-bit vectors; flags set in CMakeLists.txt).
#define STRUCTOPS_ISA_NS generic
#define STRUCTOPS_VEC_BYTES 16
#include "sparse_lowrank_cpu_kernels.inc"

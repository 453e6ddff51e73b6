// AVX-512 variant of the Monarch CPU kernels (compiled with -mavx512f -mavx512vl ... -mfma).
// 32 zmm registers: K1 tiles 8x16 / 8x32 / 6x64 fp32 (8-24 accumulators), K2 a 6 x 4 lane tile.
#define STRUCTOPS_ISA_NS avx512
#define STRUCTOPS_VEC_BYTES 64
#define STRUCTOPS_K1_MR1 8
#define STRUCTOPS_K1_MR2 8
#define STRUCTOPS_K1_MR4 6
#define STRUCTOPS_K2_MR 6
#define STRUCTOPS_K2_NR 4
#include "monarch_cpu_kernels.inc"

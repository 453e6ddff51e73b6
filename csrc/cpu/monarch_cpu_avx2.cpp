// AVX2+FMA variant of the Monarch CPU kernels (compiled with -mavx2 -mfma).
// 16 vector registers: K1 tiles 6x8 / 6x16 fp32 (6-12 accumulators), K2 a 3 x 4 lane tile.
#define STRUCTOPS_ISA_NS avx2
#define STRUCTOPS_VEC_BYTES 32
#define STRUCTOPS_K1_MR1 6
#define STRUCTOPS_K1_MR2 6
#define STRUCTOPS_K1_MR4 0
#define STRUCTOPS_K2_MR 3
#define STRUCTOPS_K2_NR 4
#include "monarch_cpu_kernels.inc"

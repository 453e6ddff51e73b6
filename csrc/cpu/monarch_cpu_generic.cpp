// Portable variant of the Monarch CPU kernels (baseline flags: SSE2 on x86-64, NEON on arm64).
// 16 vector registers: K1 tiles 6x4 / 6x8 fp32, K2 a 3 x 4 lane tile.
#define STRUCTOPS_ISA_NS generic
#define STRUCTOPS_VEC_BYTES 16
#define STRUCTOPS_K1_MR1 6
#define STRUCTOPS_K1_MR2 6
#define STRUCTOPS_K1_MR4 0
#define STRUCTOPS_K2_MR 3
#define STRUCTOPS_K2_NR 4
#include "monarch_cpu_kernels.inc"

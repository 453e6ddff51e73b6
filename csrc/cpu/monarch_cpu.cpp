// Run-time selection of the CPU kernel variant (compiled with baseline flags).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "structops/monarch.h"

namespace structops {
namespace cpu {
#define STRUCTOPS_DECLARE_ISA(ns)                                                                     \
  namespace ns {                                                                                      \
  void forward(const MonarchForwardParams& p, const CpuExecutor& exec);                               \
  void backward(const MonarchBackwardParams& p, const CpuExecutor& exec);                             \
  void permute_rows(DType dtype, const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows, \
                    int64_t a, int64_t b, const CpuExecutor& exec);                                   \
  }
STRUCTOPS_DECLARE_ISA(generic)
#if STRUCTOPS_CPU_HAVE_X86
STRUCTOPS_DECLARE_ISA(avx2)
STRUCTOPS_DECLARE_ISA(avx512)
#endif
#undef STRUCTOPS_DECLARE_ISA

// ---- scratch cache (see monarch.h); used by the ISA variants through these two functions ----
namespace {
struct CachedBlock {
  void* ptr;
  int64_t bytes;
};
std::mutex g_scratch_mutex;
std::vector<CachedBlock> g_scratch_free;
int64_t g_scratch_cached_bytes = 0;

int64_t scratch_cache_limit() {
  static const int64_t limit = [] {
    const char* env = std::getenv("STRUCTOPS_CPU_SCRATCH_CACHE_MB");
    const long mb = env ? std::strtol(env, nullptr, 10) : 256;
    return static_cast<int64_t>(mb < 0 ? 0 : mb) << 20;
  }();
  return limit;
}
}  // namespace

// Best fit from the cache, else a new 64-byte aligned allocation.  *capacity receives the size.
void* scratch_acquire(int64_t bytes, int64_t* capacity) {
  bytes = (bytes + 4095) / 4096 * 4096;
  {
    std::lock_guard<std::mutex> lock(g_scratch_mutex);
    int best = -1;
    for (int i = 0; i < static_cast<int>(g_scratch_free.size()); ++i) {
      const CachedBlock& b = g_scratch_free[i];
      if (b.bytes >= bytes && b.bytes <= 2 * bytes && (best < 0 || b.bytes < g_scratch_free[best].bytes)) best = i;
    }
    if (best >= 0) {
      CachedBlock b = g_scratch_free[best];
      g_scratch_free.erase(g_scratch_free.begin() + best);
      g_scratch_cached_bytes -= b.bytes;
      *capacity = b.bytes;
      return b.ptr;
    }
  }
  *capacity = bytes;
  return std::aligned_alloc(64, static_cast<size_t>(bytes));
}

void scratch_release(void* ptr, int64_t capacity) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(g_scratch_mutex);
  const int64_t limit = scratch_cache_limit();
  while (!g_scratch_free.empty() && g_scratch_cached_bytes + capacity > limit) {  // evict oldest
    std::free(g_scratch_free.front().ptr);
    g_scratch_cached_bytes -= g_scratch_free.front().bytes;
    g_scratch_free.erase(g_scratch_free.begin());
  }
  if (capacity > limit) {
    std::free(ptr);
    return;
  }
  g_scratch_free.push_back({ptr, capacity});
  g_scratch_cached_bytes += capacity;
}

namespace {
struct Isa {
  const char* name;
  void (*forward)(const MonarchForwardParams&, const CpuExecutor&);
  void (*backward)(const MonarchBackwardParams&, const CpuExecutor&);
  void (*permute_rows)(DType, const void*, int64_t, void*, int64_t, int64_t, int64_t, int64_t, const CpuExecutor&);
};

bool supported(const char* name) {
#if STRUCTOPS_CPU_HAVE_X86
  __builtin_cpu_init();
  if (std::strcmp(name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("fma");
  if (std::strcmp(name, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return std::strcmp(name, "generic") == 0;
}

// Best first.
const Isa kIsas[] = {
#if STRUCTOPS_CPU_HAVE_X86
    {"avx512", &avx512::forward, &avx512::backward, &avx512::permute_rows},
    {"avx2", &avx2::forward, &avx2::backward, &avx2::permute_rows},
#endif
    {"generic", &generic::forward, &generic::backward, &generic::permute_rows},
};

// Re-read on every call (cheap) so tests can switch variants with STRUCTOPS_CPU_ISA.
const Isa& select() {
  const char* want = std::getenv("STRUCTOPS_CPU_ISA");
  bool seen_wanted = want == nullptr || *want == '\0';
  for (const Isa& isa : kIsas) {
    if (!seen_wanted && std::strcmp(isa.name, want) == 0) seen_wanted = true;
    if (seen_wanted && supported(isa.name)) return isa;
  }
  for (const Isa& isa : kIsas)
    if (supported(isa.name)) return isa;
  return kIsas[sizeof(kIsas) / sizeof(kIsas[0]) - 1];
}

std::atomic<int64_t> g_variant_kernel_calls{0};

const Isa& select_for_kernel_call() {
  g_variant_kernel_calls.fetch_add(1, std::memory_order_relaxed);
  return select();
}
}  // namespace
}  // namespace cpu

void monarch_forward_cpu(const MonarchForwardParams& params, const CpuExecutor& exec) {
  cpu::select_for_kernel_call().forward(params, exec);
}

void monarch_backward_cpu(const MonarchBackwardParams& params, const CpuExecutor& exec) {
  cpu::select_for_kernel_call().backward(params, exec);
}

void permute_rows_cpu(DType dtype, const void* src, int64_t src_ld, void* dst, int64_t dst_ld, int64_t rows,
                      int64_t a, int64_t b, const CpuExecutor& exec) {
  cpu::select_for_kernel_call().permute_rows(dtype, src, src_ld, dst, dst_ld, rows, a, b, exec);
}

void* monarch_cpu_scratch_acquire(int64_t bytes, int64_t* capacity) { return cpu::scratch_acquire(bytes, capacity); }
void monarch_cpu_scratch_release(void* ptr, int64_t capacity) { cpu::scratch_release(ptr, capacity); }

const char* monarch_cpu_isa() { return cpu::select().name; }
const char* cpu_isa_for_kernel_call() { return cpu::select_for_kernel_call().name; }
int64_t cpu_variant_kernel_calls() { return cpu::g_variant_kernel_calls.load(std::memory_order_relaxed); }

void monarch_cpu_release_scratch() {
  std::lock_guard<std::mutex> lock(cpu::g_scratch_mutex);
  for (auto& b : cpu::g_scratch_free) std::free(b.ptr);
  cpu::g_scratch_free.clear();
  cpu::g_scratch_cached_bytes = 0;
}

const char* monarch_cpu_available_isas() {
  static const std::string names = [] {
    std::string out;
    for (const cpu::Isa& isa : cpu::kIsas) {
      if (!cpu::supported(isa.name)) continue;
      if (!out.empty()) out += ",";
      out += isa.name;
    }
    return out;
  }();
  return names.c_str();
}

}  // namespace structops

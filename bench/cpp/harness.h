// Tiny timing harness shared by the C++ microbenchmarks (no third-party dependency):
// warm-up, then the median of `reps` timed runs; one JSON object per line on stdout.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "structops/monarch.h"  // CpuExecutor

namespace structops_bench {

template <class F>
double median_seconds(F&& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    auto t1 = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

inline void report(const std::string& name, const std::string& shape, double seconds, double flops) {
  std::printf("{\"bench\": \"%s\", \"shape\": \"%s\", \"ms\": %.3f, \"gflops\": %.1f}\n", name.c_str(),
              shape.c_str(), seconds * 1e3, flops / seconds / 1e9);
  std::fflush(stdout);
}

// Command line of every microbenchmark: argv = [threads] [case values...], `arity` values per
// case; no case values -> `defaults`.  Returns false (usage printed) on a ragged case list.
inline bool parse_cases(int argc, char** argv, int arity, std::vector<int64_t> defaults, const char* case_usage,
                        int* threads, std::vector<int64_t>* cases) {
  *threads = argc > 1 ? std::atoi(argv[1]) : static_cast<int>(std::thread::hardware_concurrency());
  if (*threads < 1) *threads = 1;
  cases->clear();
  for (int i = 2; i < argc; ++i) cases->push_back(std::atoll(argv[i]));
  if (cases->empty()) *cases = std::move(defaults);
  if (cases->size() % arity) {
    std::fprintf(stderr, "usage: %s [threads] [%s]...\n", argv[0], case_usage);
    return false;
  }
  return true;
}

// Executor for the torch-free CPU kernels: body(i) for i in [0, n) on `threads` std::threads
// (thread t runs i = t, t + threads, ...), worker t pinned to CPU t (mod the CPU count) so two
// workers never share a core.
inline void pin_to_cpu(int64_t i) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<int>(i % std::thread::hardware_concurrency()), &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

inline void thread_parallel(void* ctx_threads, int64_t n, structops::ParallelBody body, void* ctx) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(n, *static_cast<int*>(ctx_threads)));
  auto worker = [=](int64_t t) {
    pin_to_cpu(t);
    for (int64_t i = t; i < n; i += threads) body(ctx, i);
  };
  std::vector<std::thread> ts;
  for (int64_t t = 1; t < threads; ++t) ts.emplace_back(worker, t);
  worker(0);
  for (auto& t : ts) t.join();
}

// `threads` must outlive the executor.
inline structops::CpuExecutor make_executor(int* threads) {
  structops::CpuExecutor exec;
  exec.num_threads = *threads;
  exec.parallel = &thread_parallel;
  exec.exec_ctx = threads;
  return exec;
}

}  // namespace structops_bench

// Tiny timing harness shared by the C++ microbenchmarks (no third-party dependency):
// warm-up, then the median of `reps` timed runs; one JSON object per line on stdout.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

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

}  // namespace structops_bench

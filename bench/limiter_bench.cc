// Limiter core benchmarks: checks per second (hot key, random keys over 1M live keys, single and
// batched, 1 and 2 threads, every algorithm) and bytes per live key measured as process memory.
//
//   build/bin/limiter_bench --benchmark_format=json
//   build/bin/limiter_bench --benchmark_filter='BM_Check.*Random'   # a subset
#include <benchmark/benchmark.h>

#include <unistd.h>
#include <fstream>
#include <memory>
#include <mutex>
#include <vector>

#include "limiter/limiter.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t kLiveKeys = 1'000'000;
constexpr std::size_t kBatch = 64;
const Time kStart = Time(std::chrono::seconds(1'700'000'000));

Limit benchLimit(Algorithm a) {
  // A huge limit over an hour: every check is admitted and every key stays live for the run.
  return *Limit::make({a, std::uint64_t{1} << 40, 3600s});
}

std::uint64_t xorshift(std::uint64_t& x) {
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

// One store per algorithm with kLiveKeys live keys, built once and shared by the threads of a
// benchmark (the 2-thread runs hammer the same store, as the daemon's threads would).
struct Population {
  std::unique_ptr<Store> store;
  std::vector<KeyHash> keys;
  Limit limit;
};

Population& population(Algorithm a) {
  static std::mutex mu;
  static std::unique_ptr<Population> cache[kAlgorithmCount + 1];
  std::lock_guard guard(mu);
  auto& p = cache[static_cast<int>(a)];
  if (!p) {
    const Limit limit = benchLimit(a);
    p = std::make_unique<Population>(Population{Store::make({}).value(), {}, limit});
    p->keys.reserve(kLiveKeys);
    for (std::size_t i = 0; i < kLiveKeys; ++i) {
      p->keys.push_back(hashKey("bench", "user:" + std::to_string(i), limit));
      p->store->check(p->keys.back(), limit, 1, kStart);
    }
  }
  return *p;
}

void BM_CheckHotKey(benchmark::State& state) {
  const auto a = static_cast<Algorithm>(state.range(0));
  static std::unique_ptr<Store> store;
  if (state.thread_index() == 0) store = Store::make({}).value();
  const Limit limit = benchLimit(a);
  const KeyHash key = hashKey("bench", "hot", limit);
  std::int64_t ns = kStart.time_since_epoch().count();
  for (auto _ : state) {
    benchmark::DoNotOptimize(store->check(key, limit, 1, Time(Duration(++ns))));
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(std::string(algorithmName(a)));
}

void BM_CheckRandomKeys(benchmark::State& state) {
  const auto a = static_cast<Algorithm>(state.range(0));
  Population& p = population(a);
  std::uint64_t rng =
      0x1234567ull + static_cast<std::uint64_t>(static_cast<unsigned>(state.thread_index()));
  const Time now = kStart + 1s;
  for (auto _ : state) {
    const KeyHash& k = p.keys[xorshift(rng) % kLiveKeys];
    benchmark::DoNotOptimize(p.store->check(k, p.limit, 1, now));
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(std::string(algorithmName(a)) + " 1M live keys");
}

// The batch API: prefetches the slots of the batch, so DRAM misses overlap.
void BM_CheckBatchRandomKeys(benchmark::State& state) {
  const auto a = static_cast<Algorithm>(state.range(0));
  Population& p = population(a);
  std::uint64_t rng =
      0x7654321ull + static_cast<std::uint64_t>(static_cast<unsigned>(state.thread_index()));
  // Batches are drawn up front (choosing keys is the caller's work): 16384 batches of 64, a million
  // random keys, so the tables' working set is far larger than the caches.
  constexpr std::size_t kBatches = 16384;
  std::vector<CheckRequest> requests(kBatches * kBatch);
  for (auto& r : requests) r = {p.keys[xorshift(rng) % kLiveKeys], &p.limit, 1};
  std::vector<Decision> out(kBatch);
  const Time now = kStart + 1s;
  std::size_t next = 0;
  for (auto _ : state) {
    p.store->checkBatch(std::span(requests).subspan(next * kBatch, kBatch), now, out);
    benchmark::DoNotOptimize(out.data());
    next = next + 1 == kBatches ? 0 : next + 1;
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kBatch));
  state.SetLabel(std::string(algorithmName(a)) + " 1M live keys, batches of 64");
}

std::size_t residentBytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// Process memory delta per live key: the tables, their slack and allocator overhead all count.
void BM_MemoryPerKey(benchmark::State& state) {
  const auto keys = static_cast<std::size_t>(state.range(0));
  const Limit limit = benchLimit(Algorithm::kTokenBucket);
  double bytes_per_key = 0;
  double table_bytes_per_key = 0;
  for (auto _ : state) {
    const std::size_t before = residentBytes();
    // The cap only bounds growth; tables are sized by the live keys, so 2x headroom costs nothing
    // and keeps the uneven spread over shards from evicting.
    auto store = Store::make({2 * keys, 1024}).value();
    for (std::size_t i = 0; i < keys; ++i) {
      store->check(hashKey("mem", "user:" + std::to_string(i), limit), limit, 1, kStart);
    }
    const std::size_t after = residentBytes();
    const StoreStats st = store->stats();
    if (st.entries != keys) state.SkipWithError("keys were evicted");
    bytes_per_key = static_cast<double>(after - before) / static_cast<double>(keys);
    table_bytes_per_key = static_cast<double>(st.table_bytes) / static_cast<double>(keys);
  }
  state.counters["bytes_per_key"] = bytes_per_key;
  state.counters["table_bytes_per_key"] = table_bytes_per_key;  // the tables alone, for comparison
  state.counters["entry_bytes"] = 32;
}

// The five rate algorithms. A concurrency check acquires a lease, a store entry of its own per
// check (limiter/lease.h), so the shapes above (a hot key, a limit of 2^40) do not apply to it.
void allAlgorithms(benchmark::internal::Benchmark* b) {
  for (int a = 1; a <= static_cast<int>(Algorithm::kGcra); ++a) b->Arg(a);
  b->ArgName("algorithm");
}

}  // namespace

BENCHMARK(BM_CheckHotKey)->Apply(allAlgorithms)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_CheckRandomKeys)->Apply(allAlgorithms)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_CheckBatchRandomKeys)->Apply(allAlgorithms)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_MemoryPerKey)
    ->Arg(1'000'000)
    ->Arg(10'000'000)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();

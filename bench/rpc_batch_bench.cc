// What a node spends on one client batch of checks in its RPC service, decoded to encoded
// (no sockets, no framing: the Cap'n Proto call is local), when the batch is decided and when an
// overloaded loop sheds it (docs/overload.md). A shed answer must cost far less than a
// decision, or shedding spends the capacity it frees; the ratio of the two is the figure.
//
//   build/bin/rpc_batch_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <capnp/capability.h>
#include <kj/async.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "daemon/metrics/metrics.h"
#include "daemon/routing/router.h"
#include "daemon/rpc/rpc_service.h"
#include "daemon/service/limiter_service.h"
#include "daemon/service/overload.h"
#include "proto/throttlex.capnp.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

constexpr unsigned kBatch = 1000;       // the client library's batches under load (~990 measured)
constexpr std::size_t kKeys = 100'000;  // as throttlex-bench --keys 100000

struct Node {
  ManualClock clock;
  std::unique_ptr<Store> store = Store::make({1'000'000, 64}).value();
  LimiterService service{
      *store, clock,
      RuleSet::parseYaml("rules:\n  - {name: bench, limit: 1000000000, period: 1s}\n").value(), ""};
  Metrics metrics{Metrics::Options{"node-1", "0.1.0", store.get(), {}, {}, {}}};
  Router router{service, nullptr, nullptr};
  RpcCounters counters;
  kj::EventLoop loop;
  kj::WaitScope ws{loop};
  proto::Node::Client client{kj::heap<RpcService>(router, NodeInfoProvider{}, &metrics, counters,
                                                  nullptr, proto::Role::kClient)};
  OverloadDetector detector{{10ms, 100ms}};
  std::vector<std::string> keys;

  Node() {
    keys.reserve(kKeys);
    for (std::size_t i = 0; i < kKeys; ++i) keys.push_back("user-" + std::to_string(i));
  }
  // A standing queue of 150 ms waits on this thread's loop: sheddable checks are shed.
  void overload() {
    const Instant now = clock.monotonic();
    for (Instant t = now - 300ms; t <= now; t += 5ms) detector.sample(t, 150ms, t + 5ms);
    OverloadDetector::setCurrent(&detector);
  }
  ~Node() { OverloadDetector::setCurrent(nullptr); }
};

void runBatches(benchmark::State& state, bool overloaded, bool compact = false) {
  Node node;
  if (overloaded) node.overload();
  std::uint64_t x = 88172645463325252ULL;
  std::uint64_t shed = 0;
  for (auto _ : state) {
    state.PauseTiming();  // building the request is the client's work
    auto req = node.client.checkBatchRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    req.setCompactShed(compact);
    auto checks = req.initChecks(kBatch);
    for (unsigned i = 0; i < kBatch; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      checks[i].setRule("bench");
      checks[i].setKey(node.keys[x % kKeys]);
      checks[i].setPriority(proto::Priority::SHEDDABLE);
    }
    state.ResumeTiming();
    auto answer = req.send().wait(node.ws);
    const bool whole = answer.getResults().size() == 0 && answer.getShedAnswers().size() > 0;
    if (whole || answer.getResults()[0].getShed() != proto::ShedReason::NONE) ++shed;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * kBatch);
  state.counters["shed_batches"] = static_cast<double>(shed);
}

void BM_RpcBatch_Decided(benchmark::State& state) {
  runBatches(state, false);
}
void BM_RpcBatch_Shed(benchmark::State& state) {
  runBatches(state, true);
}

// As the C++ client asks (compactShed): a batch shed whole is answered once per rule.
void BM_RpcBatch_ShedCompact(benchmark::State& state) {
  runBatches(state, true, true);
}

BENCHMARK(BM_RpcBatch_Decided)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RpcBatch_Shed)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RpcBatch_ShedCompact)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();

// rls-bench: closed-loop load on Envoy's rate limit service (a node's --rls-port), as Envoy sends
// it: one ShouldRateLimit per request, one descriptor, keys spread over --keys values. Keeps
// --concurrency calls in flight per channel (gRPC's async API, one completion queue per thread)
// for --duration seconds and prints {"throughput": calls/s, "over_limit": n, "errors": n} as JSON.
// With several --target, channel i goes to target i mod N (entering a cluster at every node).
//
//   rls-bench --target 127.0.0.1:8081 [--target ...] --domain bench --descriptor-key user
//             [--channels 4] [--concurrency 32] [--keys 100000] [--duration 5] [--warmup 1]
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/real_time.h"
#include "envoy/service/ratelimit/v3/rls.grpc.pb.h"

namespace {

namespace rls = envoy::service::ratelimit::v3;
using Clock = throttlex::bench::RealTime;

struct Options {
  std::vector<std::string> targets;
  std::string domain = "bench";
  std::string descriptor_key = "user";
  int channels = 4;
  int concurrency = 32;
  std::uint64_t keys = 100'000;
  double duration = 5;
  double warmup = 1;
};

struct Counts {
  std::atomic<std::uint64_t> ok{0}, over{0}, errors{0};
};

// One call in flight: its request, response, status and context, reused for the next call.
struct Call {
  grpc::ClientContext context;
  rls::RateLimitResponse response;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<rls::RateLimitResponse>> reader;
};

class Channel {
 public:
  Channel(const Options& o, const std::string& target, std::uint64_t seed)
      : o_(o),
        stub_(rls::RateLimitService::NewStub(
            grpc::CreateChannel(target, grpc::InsecureChannelCredentials()))),
        rng_(seed) {}

  // Runs until `stop`; counts answers that arrive while `counting`.
  void run(const std::atomic<bool>& stop, const std::atomic<bool>& counting, Counts& counts) {
    for (int i = 0; i < o_.concurrency; ++i) start(new Call);
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
      auto* call = static_cast<Call*>(tag);
      if (counting.load(std::memory_order_relaxed)) {
        if (!ok || !call->status.ok()) {
          counts.errors.fetch_add(1, std::memory_order_relaxed);
        } else if (call->response.overall_code() == rls::RateLimitResponse::OVER_LIMIT) {
          counts.over.fetch_add(1, std::memory_order_relaxed);
        } else {
          counts.ok.fetch_add(1, std::memory_order_relaxed);
        }
      }
      delete call;
      --in_flight_;
      if (!stop.load(std::memory_order_relaxed)) {
        start(new Call);
      } else if (in_flight_ == 0) {
        cq_.Shutdown();  // Next() drains and then returns false
      }
    }
  }

 private:
  void start(Call* call) {
    ++in_flight_;
    rls::RateLimitRequest request;
    request.set_domain(o_.domain);
    auto* entry = request.add_descriptors()->add_entries();
    entry->set_key(o_.descriptor_key);
    entry->set_value(std::to_string(rng_() % o_.keys));
    call->context.set_deadline(Clock::wallNow() + std::chrono::seconds(5));
    call->reader = stub_->AsyncShouldRateLimit(&call->context, request, &cq_);
    call->reader->Finish(&call->response, &call->status, call);
  }

  const Options& o_;
  std::unique_ptr<rls::RateLimitService::Stub> stub_;
  grpc::CompletionQueue cq_;
  std::mt19937_64 rng_;
  int in_flight_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Closed-loop load on Envoy's rate limit service (ShouldRateLimit)"};
  app.add_option("--target", o.targets, "HOST:PORT of a node's RLS port; repeat for several")
      ->required();
  app.add_option("--domain", o.domain, "The rules' domain");
  app.add_option("--descriptor-key", o.descriptor_key, "The one descriptor entry's key");
  app.add_option("--channels", o.channels, "Channels (one thread each)")->check(CLI::Range(1, 64));
  app.add_option("--concurrency", o.concurrency, "Calls in flight per channel")
      ->check(CLI::Range(1, 4096));
  app.add_option("--keys", o.keys, "Distinct descriptor values")
      ->check(CLI::Range(1, 1'000'000'000));
  app.add_option("--duration", o.duration, "Seconds measured")->check(CLI::Range(0.1, 3600.0));
  app.add_option("--warmup", o.warmup, "Seconds before measuring")->check(CLI::Range(0.0, 600.0));
  CLI11_PARSE(app, argc, argv);

  std::atomic<bool> stop{false}, counting{false};
  Counts counts;
  std::vector<std::unique_ptr<Channel>> channels;
  for (int i = 0; i < o.channels; ++i) {
    channels.push_back(std::make_unique<Channel>(
        o, o.targets[static_cast<std::size_t>(i) % o.targets.size()], 1234 + i));
  }
  std::vector<std::thread> threads;
  for (auto& c : channels) {
    threads.emplace_back([&, ch = c.get()] { ch->run(stop, counting, counts); });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(o.warmup));
  counting = true;
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(o.duration));
  counting = false;
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  stop = true;
  for (auto& t : threads) t.join();
  const std::uint64_t answered = counts.ok + counts.over;
  std::printf("{\"throughput\": %.0f, \"over_limit\": %llu, \"errors\": %llu}\n",
              static_cast<double>(answered) / seconds,
              static_cast<unsigned long long>(counts.over.load()),
              static_cast<unsigned long long>(counts.errors.load()));
  return counts.errors > answered / 100 ? 1 : 0;
}

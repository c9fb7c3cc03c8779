// The threads a check crosses: a KJ event loop on an Asio io_context (daemon/loop/kj_on_asio.h)
// speaks Cap'n Proto and runs KJ timers on the io_context's thread, and a check forwarded from an
// HTTP-style worker thread is decided on the owner's worker thread (its RPC server hosted there)
// and completed on the thread it entered — two threads, no hand-off inside the entry node.
#include <doctest/doctest.h>

#include <asio.hpp>

#include <chrono>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "daemon/http/http_api.h"
#include "daemon/loop/kj_on_asio.h"
#include "daemon/routing/forwarder.h"
#include "daemon/routing/ring_view.h"
#include "daemon/routing/router.h"
#include "daemon/rpc/rpc_server.h"
#include "daemon/service/limiter_service.h"
#include "limiter/clock.h"
#include "proto/node_connection.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

// A manual clock that remembers which threads read the wall time (limiter decisions do).
class TracingClock final : public Clock {
 public:
  Time now() const override {
    std::lock_guard guard(mu_);
    readers_.insert(std::this_thread::get_id());
    return inner_.now();
  }
  Instant monotonic() const override { return inner_.monotonic(); }
  std::set<std::thread::id> readers() const {
    std::lock_guard guard(mu_);
    return readers_;
  }

 private:
  ManualClock inner_{Time(std::chrono::seconds(1'700'000'000))};
  mutable std::mutex mu_;
  mutable std::set<std::thread::id> readers_;
};

const SystemClock real_clock;

// A node that decides everything it is asked over RPC, as an owner does: its RPC server hosted
// on one worker thread (an io_context with the node's per-thread scope), as throttlexd runs it.
struct Owner {
  TracingClock clock;
  std::unique_ptr<Store> store = Store::make({10'000, 16}).value();
  LimiterService service{*store, clock, RuleSet::make({}).value(), ""};
  Router router{service, nullptr, nullptr};
  std::unique_ptr<RpcServer> rpc;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::unique_ptr<HttpThreadScope> scope;  // on `thread` only
  std::thread thread;

  Owner() {
    RpcServerOptions o;
    o.bind_address = "127.0.0.1";
    o.port = 0;
    o.hosted = true;
    rpc = RpcServer::start(o, router, {}, nullptr).value();
    std::promise<void> hosted;
    thread = std::thread([this, &hosted] {
      scope =
          forwardingThreads(router, real_clock, [this](KjOnAsio& kj) { return rpc->host(kj); })(io);
      hosted.set_value();
      io.run();
      scope.reset();
    });
    hosted.get_future().wait();
  }
  ~Owner() {
    asio::post(io, [this] {
      scope->stop();
      work.reset();
    });
    thread.join();
    rpc->stop();
  }
  Owner(const Owner&) = delete;
  Owner& operator=(const Owner&) = delete;
  std::string address() const { return "127.0.0.1:" + std::to_string(rpc->port()); }
};

// `key` is viewed, not copied: it must outlive the check.
CheckArgs inlineCheck(const std::string& key) {
  CheckArgs a;
  a.key = key;
  a.limit = LimitSpec{Algorithm::kTokenBucket, 10, std::chrono::seconds(60), 0};
  return a;
}

}  // namespace

TEST_CASE("a KJ loop on an Asio io_context makes Cap'n Proto calls, and the context runs dry") {
  Owner owner;
  asio::io_context io;
  bool answered = false;
  bool timer_fired = false;
  std::thread::id answered_on;
  {
    KjOnAsio kj(io, real_clock);
    kj::Own<proto::NodeConnection> conn;
    auto connected = kj.connect(owner.address());
    auto call = connected.then([&](kj::Own<kj::AsyncIoStream> stream) {
      conn = kj::heap<proto::NodeConnection>(kj::mv(stream), capnp::ReaderOptions());
      auto request = conn->node.checkRequest();
      request.setVersion(proto::PROTOCOL_VERSION);
      auto check = request.initRequest();
      check.setKey("k");
      auto limit = check.initLimit();
      limit.setLimit(5);
      limit.setPeriodMs(60'000);
      return request.send().then([&](auto&& response) {
        answered = response.getResult().getAllowed();
        answered_on = std::this_thread::get_id();
        return kj.timer().afterDelay(20 * kj::MILLISECONDS);
      });
    });
    auto done = call.then([&] { timer_fired = true; }).eagerlyEvaluate([&](kj::Exception&& e) {
      FAIL_CHECK(e.getDescription().cStr());
    });
    // Runs until the call, its answer and the timer are done (bounded: a failure ends the wait).
    const auto deadline = real_clock.monotonic() + 10s;
    while (!timer_fired && real_clock.monotonic() < deadline) io.run_for(50ms);
    conn = nullptr;
    kj.settle(true);
  }
  CHECK(answered);
  CHECK(timer_fired);
  CHECK(answered_on == std::this_thread::get_id());
  io.restart();
  io.run_for(2s);  // the connection's waits complete as cancelled, then nothing is left
  CHECK(io.stopped());
}

TEST_CASE(
    "a signal fulfilled on another thread wakes the KJ loop on an io_context, on its thread") {
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  bool resolved = false;
  std::thread::id resolved_on;
  {
    KjOnAsio kj(io, real_clock);
    CrossThreadSignal signal = crossThreadSignal();
    auto done = signal.promise
                    .then([&] {
                      resolved = true;
                      resolved_on = std::this_thread::get_id();
                    })
                    .eagerlyEvaluate(nullptr);
    std::thread other([fulfill = signal.fulfill] { fulfill(); });
    const auto deadline = real_clock.monotonic() + 10s;
    while (!resolved && real_clock.monotonic() < deadline) io.run_for(20ms);
    other.join();
    kj.settle(true);
  }
  CHECK(resolved);
  CHECK(resolved_on == std::this_thread::get_id());
}

TEST_CASE(
    "a forwarded check crosses two threads: decided on the owner's, completed where it entered") {
  Owner owner;
  ManualClock entry_clock{Time(std::chrono::seconds(1'700'000'000))};
  std::unique_ptr<Store> store = Store::make({10'000, 16}).value();
  LimiterService service{*store, entry_clock, RuleSet::make({}).value(), ""};
  RingHolder ring;
  ForwarderOptions options;
  auto forwarder = Forwarder::start(options, service, ring).value();
  Router router(service, &ring, forwarder.get());
  {
    auto view = std::make_shared<RingView>();
    view->ring = Ring({"entry", "owner"});
    view->rpc_address.resize(2);
    for (std::uint32_t i = 0; i < 2; ++i) {
      const bool is_owner = view->ring.members()[i] == "owner";
      view->rpc_address[i] = is_owner ? owner.address() : "127.0.0.1:1";
      if (!is_owner) view->self = i;
    }
    ring.publish(std::move(view));
  }
  // Keys the owner owns.
  std::vector<std::string> keys;
  for (int i = 0; keys.size() < 20; ++i) {
    std::string key = "key-" + std::to_string(i);
    if (ring.current()->peerFor(slotOf("", key)) != RingView::kNoPeer) keys.push_back(key);
  }
  std::vector<CheckArgs> checks;
  for (const std::string& key : keys) checks.push_back(inlineCheck(key));

  struct Sink final : ForwardSink {
    std::mutex mu;
    std::set<std::thread::id> threads;
    std::size_t delivered = 0, allowed = 0;
    void deliver(std::size_t, Result<CheckOutcome> outcome) override {
      std::lock_guard guard(mu);
      threads.insert(std::this_thread::get_id());
      ++delivered;
      if (outcome && outcome->decision.allowed && outcome->route == RouteKind::kForwarded) {
        ++allowed;
      }
    }
  };
  auto sink = std::make_shared<Sink>();

  // The entry thread, as an HTTP worker: an io_context with the node's per-thread scope.
  asio::io_context io;
  std::thread::id entry_thread;
  std::thread worker([&] {
    entry_thread = std::this_thread::get_id();
    auto scope = forwardingThreads(router, real_clock)(io);
    asio::post(io, [&] {
      std::vector<Result<CheckOutcome>> out;
      Forwarding f = router.checkBatch(checks, 0, out);
      REQUIRE(f.checks.size() == checks.size());
      router.forward(std::move(f), sink);
    });
    const auto deadline = real_clock.monotonic() + 10s;
    while (real_clock.monotonic() < deadline) {
      io.run_for(20ms);
      std::lock_guard guard(sink->mu);
      if (sink->delivered == checks.size()) break;
    }
    scope->stop();
    scope.reset();
  });
  worker.join();

  CHECK(sink->delivered == checks.size());
  CHECK(sink->allowed == checks.size());
  // Completed on the entry thread only.
  CHECK(sink->threads == std::set<std::thread::id>{entry_thread});
  // Decided on the owner's one worker thread (where its RPC is hosted), not the entry thread:
  // two threads in all.
  const auto deciders = owner.clock.readers();
  REQUIRE(deciders.size() == 1);
  CHECK(*deciders.begin() != entry_thread);
  // Nothing went through the forwarder's own thread.
  CHECK(forwarder->stats().handoffs == 0);
  forwarder->stop();
}

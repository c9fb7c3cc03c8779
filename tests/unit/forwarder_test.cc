// Forwarding between in-process nodes over real loopback RPC: each node has its own store,
// service, forwarder, router and RPC server; the tests publish the ring themselves (no gossip), so
// they control exactly who owns what and when that changes.
#include <doctest/doctest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/routing/forwarder.h"
#include "daemon/routing/ring_view.h"
#include "daemon/routing/router.h"
#include "daemon/rpc/rpc_server.h"
#include "daemon/service/limiter_service.h"
#include "limiter/clock.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

// Real time (these tests run real sockets and threads), read through the clock adapter.
struct SteadyClock {
  static Instant now() {
    static const SystemClock real;
    return real.monotonic();
  }
};

// Collects the results of one routed request (HTTP and RPC do the same with their own sinks).
class Collect final : public ForwardSink {
 public:
  explicit Collect(std::size_t n) : results_(n, Error{ErrorCode::kInternal, "not delivered"}) {}
  void deliver(std::size_t index, Result<CheckOutcome> outcome) override {
    std::lock_guard guard(mu_);
    results_[index] = std::move(outcome);
    ++delivered_[index];
    cv_.notify_all();
  }
  // Waits (bounded) until `count` results arrived; returns them.
  std::vector<Result<CheckOutcome>> wait(std::size_t count) {
    std::unique_lock lock(mu_);
    const bool all = cv_.wait_for(lock, 10s, [&] { return total() >= count; });
    REQUIRE(all);
    for (const auto& [i, n] : delivered_) CHECK(n == 1);  // exactly once
    return results_;
  }

 private:
  std::size_t total() const {
    std::size_t t = 0;
    for (const auto& [i, n] : delivered_) t += n;
    return t;
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Result<CheckOutcome>> results_;
  std::map<std::size_t, std::size_t> delivered_;
};

struct TestNode {
  std::string id;
  ManualClock clock{Time(std::chrono::seconds(1'700'000'000))};
  std::unique_ptr<Store> store = Store::make({100'000, 64}).value();
  std::unique_ptr<LimiterService> service;
  RingHolder ring;
  std::unique_ptr<Forwarder> forwarder;
  std::unique_ptr<Router> router;
  std::unique_ptr<RpcServer> rpc;
  std::uint16_t port = 0;

  TestNode(std::string name, ForwarderOptions options, RuleSet rules = RuleSet::make({}).value())
      : id(std::move(name)) {
    service = std::make_unique<LimiterService>(*store, clock, std::move(rules), "");
    forwarder = Forwarder::start(options, *service, ring).value();
    router = std::make_unique<Router>(*service, &ring, forwarder.get());
    startRpc(0);
  }
  ~TestNode() {
    if (rpc) rpc->stop();
    forwarder->stop();
  }
  void startRpc(std::uint16_t at) {
    RpcServerOptions o;
    o.bind_address = "127.0.0.1";
    o.port = at;
    auto started = RpcServer::start(o, *router, {}, nullptr);
    REQUIRE(started.ok());
    rpc = std::move(*started);
    port = rpc->port();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }

  // Routes `args` as an API would and waits for every answer.
  std::vector<Result<CheckOutcome>> check(const std::vector<CheckArgs>& args,
                                          std::uint8_t hops = 0) {
    std::vector<Result<CheckOutcome>> out;
    Forwarding f = router->checkBatch(args, hops, out);
    if (f.empty()) return out;
    auto sink = std::make_shared<Collect>(args.size());
    const std::size_t forwarded = f.checks.size();
    const std::vector<std::size_t> indices = f.indices;
    router->forward(std::move(f), sink);
    auto answers = sink->wait(forwarded);
    for (std::size_t i : indices) out[i] = answers[i];
    return out;
  }
};

// Publishes, on every node, the ring of `members` (a subset of `nodes`, by id).
void publishRing(const std::vector<TestNode*>& nodes, const std::vector<TestNode*>& members) {
  std::vector<std::string> ids;
  for (TestNode* m : members) ids.push_back(m->id);
  for (TestNode* n : nodes) {
    auto view = std::make_shared<RingView>();
    view->ring = Ring(ids);
    view->rpc_address.resize(view->ring.members().size());
    for (std::size_t i = 0; i < view->ring.members().size(); ++i) {
      for (TestNode* m : members) {
        if (m->id == view->ring.members()[i]) view->rpc_address[i] = m->address();
      }
      if (view->ring.members()[i] == n->id) view->self = static_cast<std::uint32_t>(i);
    }
    n->ring.publish(std::move(view));
  }
}

// Publishes, on every node of `nodes`, a ring of `ids` whose members are at `addresses`.
void publishRingAt(const std::vector<TestNode*>& nodes, const std::vector<std::string>& ids,
                   const std::vector<std::string>& addresses) {
  for (TestNode* n : nodes) {
    auto view = std::make_shared<RingView>();
    view->ring = Ring(ids);
    view->rpc_address.resize(ids.size());
    for (std::size_t i = 0; i < view->ring.members().size(); ++i) {
      for (std::size_t j = 0; j < ids.size(); ++j) {
        if (ids[j] == view->ring.members()[i]) view->rpc_address[i] = addresses[j];
      }
      if (view->ring.members()[i] == n->id) view->self = static_cast<std::uint32_t>(i);
    }
    n->ring.publish(std::move(view));
  }
}

// A node that is frozen (SIGSTOP, a stalled loop): the kernel accepts connections and takes their
// bytes, and nothing ever answers.
class FrozenListener {
 public:
  FrozenListener() : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd_, 16) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port_ = ntohs(addr.sin_port);
  }
  ~FrozenListener() { ::close(fd_); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_;
  std::uint16_t port_ = 0;
};

ForwarderOptions fastOptions() {
  ForwarderOptions o;
  o.owner_silence = 2000ms;  // generous: TSan and a loaded CI machine are slow
  o.connect_timeout = 1000ms;
  o.cooldown_min = 20ms;
  o.cooldown_max = 100ms;
  return o;
}

CheckArgs inlineCheck(const std::string& key, std::uint64_t limit, std::uint64_t hits = 1) {
  CheckArgs a;
  a.key = key;
  a.limit = {Algorithm::kTokenBucket, limit, std::chrono::hours(1), 0};
  a.hits = hits;
  return a;
}

// Keys of `owner` in a ring of `ids` (inline limits: namespace "").
std::vector<std::string> keysOwnedBy(const std::vector<std::string>& ids, const std::string& owner,
                                     std::size_t count) {
  Ring ring(ids);
  std::vector<std::string> keys;
  for (int i = 0; keys.size() < count && i < 100'000; ++i) {
    std::string k = "user:" + std::to_string(i);
    if (ring.ownerOf(slotOf("", k)) == owner) keys.push_back(std::move(k));
  }
  REQUIRE(keys.size() == count);
  return keys;
}

PeerStats peer(const TestNode& n, const std::string& id) {
  for (const PeerStats& p : n.forwarder->stats().peers) {
    if (p.node_id == id) return p;
  }
  return {};
}

}  // namespace

TEST_CASE("a check entering any node is decided by its key's owner, exactly") {
  TestNode a("a", fastOptions()), b("b", fastOptions()), c("c", fastOptions());
  publishRing({&a, &b, &c}, {&a, &b, &c});
  const auto b_keys = keysOwnedBy({"a", "b", "c"}, "b", 20);

  // Limit 3 per key; each key checked 5 times, entering a, c, a, b, c: 3 allowed, 2 denied.
  TestNode* entries[] = {&a, &c, &a, &b, &c};
  for (int round = 0; round < 5; ++round) {
    std::vector<CheckArgs> args;
    for (const auto& k : b_keys) args.push_back(inlineCheck(k, 3));
    const auto out = entries[round]->check(args);
    for (const auto& r : out) {
      REQUIRE(r.ok());
      CHECK(r->allowed == (round < 3));
      CHECK(r->decision.remaining == static_cast<std::uint64_t>(round < 3 ? 2 - round : 0));
      CHECK(r->route == (entries[round] == &b ? RouteKind::kLocal : RouteKind::kForwarded));
    }
  }
  // State lives on the owner only.
  CHECK(b.store->stats().entries == b_keys.size());
  CHECK(a.store->stats().entries == 0);
  CHECK(c.store->stats().entries == 0);
  CHECK(peer(a, "b").breaker == BreakerState::kClosed);
  CHECK(peer(a, "b").checks == 2 * b_keys.size());
}

TEST_CASE("a mixed batch keeps request order and per-key order across owners") {
  TestNode a("a", fastOptions()), b("b", fastOptions());
  publishRing({&a, &b}, {&a, &b});
  std::vector<std::string> keys;
  for (int i = 0; i < 40; ++i) keys.push_back("k" + std::to_string(i));
  // Each key its own limit (1, 2 or 3), so an answer delivered at another key's index shows.
  const auto limit_of = [](std::size_t key) { return 1 + key % 3; };
  std::vector<CheckArgs> args;
  for (int rep = 0; rep < 3; ++rep) {
    for (std::size_t k = 0; k < keys.size(); ++k) args.push_back(inlineCheck(keys[k], limit_of(k)));
  }
  const auto out = a.check(args);
  REQUIRE(out.size() == args.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    REQUIRE(out[i].ok());
    const std::size_t rep = i / keys.size();
    const std::size_t limit = limit_of(i % keys.size());
    CHECK(out[i]->allowed == (rep < limit));
    CHECK(out[i]->decision.remaining == (rep < limit ? limit - rep - 1 : 0));
  }
  // Invalid checks are answered where they entered, with the same error the owner would give.
  std::vector<CheckArgs> bad{inlineCheck("", 2), inlineCheck("x", 0)};
  bad[1].limit.period = std::chrono::milliseconds(0);
  const auto errors = a.check(bad);
  REQUIRE_FALSE(errors[0].ok());
  REQUIRE_FALSE(errors[1].ok());
  CHECK(errors[0].error().code == ErrorCode::kInvalidArgument);
  CHECK(errors[1].error().code == ErrorCode::kInvalidArgument);
}

TEST_CASE("with the owner down, its stand-in decides exactly; the breaker recovers") {
  TestNode a("a", fastOptions()), b("b", fastOptions()), c("c", fastOptions());
  publishRing({&a, &b, &c}, {&a, &b, &c});
  const Ring ring({"a", "b", "c"});
  const auto b_keys = keysOwnedBy({"a", "b", "c"}, "b", 20);
  const std::uint16_t b_port = b.port;
  std::vector<CheckArgs> all;
  for (const auto& k : b_keys) all.push_back(inlineCheck(k, 10));
  for (const auto& r : a.check(all)) CHECK(r->route == RouteKind::kForwarded);  // 1 of 10 used

  b.rpc->stop();  // b's connections close: calls to b fail and the breakers open
  b.rpc.reset();
  // Every node sends b's keys to the same stand-in, the slot's runner-up, which decides with the
  // full limit whichever node the checks enter. It starts from empty state (b's is out of reach
  // until snapshots exist), so it admits 10 in all: the one b counted is admitted again.
  std::vector<int> allowed(b_keys.size());
  TestNode* entries[] = {&a, &c, &a, &c, &a, &c, &a, &c, &a, &c, &a, &c};
  for (TestNode* entry : entries) {
    const auto out = entry->check(all);
    for (std::size_t i = 0; i < out.size(); ++i) {
      REQUIRE(out[i].ok());
      CHECK(out[i]->route == RouteKind::kDegraded);
      allowed[i] += out[i]->allowed ? 1 : 0;
    }
  }
  for (int n : allowed) CHECK(n == 10);
  CHECK(peer(a, "b").breaker != BreakerState::kClosed);
  CHECK(peer(a, "b").failures >= 1);
  CHECK(a.forwarder->stats().standin >= b_keys.size());
  CHECK(a.forwarder->stats().degraded == 0);  // no policy decision: the stand-in was reachable
  // The state lives on the runner-up of each slot only.
  std::size_t on_a = 0, on_c = 0;
  for (const auto& k : b_keys) {
    (ring.members()[ring.runnerUpIndex(slotOf("", k))] == "a" ? on_a : on_c)++;
  }
  CHECK(a.store->stats().entries == on_a);
  CHECK(c.store->stats().entries == on_c);

  // b comes back on its port: after the cooldown a probe succeeds and forwarding resumes.
  b.startRpc(b_port);
  const auto until = SteadyClock::now() + 10s;
  std::optional<RouteKind> route;
  while (SteadyClock::now() < until) {
    route = a.check({inlineCheck(b_keys[0], 10, 0)})[0]->route;
    if (route == RouteKind::kForwarded) break;
    std::this_thread::yield();
  }
  CHECK(route == RouteKind::kForwarded);
  CHECK(peer(a, "b").breaker == BreakerState::kClosed);
  CHECK(peer(a, "b").breaker_opens >= 1);
}

TEST_CASE("a frozen owner's keys wait T for it, then its stand-in decides them exactly") {
  ForwarderOptions options = fastOptions();
  options.owner_silence = 400ms;
  TestNode a("a", options), c("c", options);
  FrozenListener b;
  publishRingAt({&a, &c}, {"a", "b", "c"}, {a.address(), b.address(), c.address()});
  const auto b_keys = keysOwnedBy({"a", "b", "c"}, "b", 10);
  std::vector<CheckArgs> all;
  for (const auto& k : b_keys) all.push_back(inlineCheck(k, 4));

  // Its connection is accepted and its batches are taken, so only silence tells it is down: the
  // checks wait at least T (less one heartbeat, when the silence began) before anyone else
  // decides them, then the stand-in (each slot's runner-up) does.
  const auto start = SteadyClock::now();
  const auto first = a.check(all);
  CHECK(SteadyClock::now() - start >= options.owner_silence - options.heartbeat);
  CHECK(a.forwarder->stats().silences >= 1);
  CHECK(peer(a, "b").breaker != BreakerState::kClosed);
  // Rounds entering a and c: the stand-in decides each key with its full limit, exactly.
  std::vector<int> allowed(b_keys.size());
  for (std::size_t i = 0; i < first.size(); ++i) {
    REQUIRE(first[i].ok());
    CHECK(first[i]->route == RouteKind::kDegraded);
    allowed[i] += first[i]->allowed ? 1 : 0;
  }
  TestNode* entries[] = {&c, &a, &c, &a, &c};
  for (TestNode* entry : entries) {
    const auto out = entry->check(all);
    for (std::size_t i = 0; i < out.size(); ++i) {
      REQUIRE(out[i].ok());
      CHECK(out[i]->route == RouteKind::kDegraded);
      allowed[i] += out[i]->allowed ? 1 : 0;
    }
  }
  for (int n : allowed) CHECK(n == 4);
  CHECK(a.forwarder->stats().degraded == 0);  // the stand-in, not a policy, decided
}

TEST_CASE("an owner that comes to a batch after its decide-by time decides none of it") {
  // b's clock runs an hour ahead of a's: every batch from a is past its decide-by time there.
  // b refuses each one (kNotDecided) and spends nothing; a sends each check again a bounded
  // number of times, then decides it by the degraded policy.
  TestNode a("a", fastOptions()), b("b", fastOptions());
  b.clock.advance(std::chrono::hours(1));
  publishRing({&a, &b}, {&a, &b});
  const auto b_keys = keysOwnedBy({"a", "b"}, "b", 5);
  std::vector<CheckArgs> args;
  for (const auto& k : b_keys) args.push_back(inlineCheck(k, 4));
  for (const auto& r : a.check(args)) {
    REQUIRE(r.ok());
    CHECK(r->route == RouteKind::kDegraded);
  }
  CHECK(b.store->stats().entries == 0);  // b decided nothing
  CHECK(a.forwarder->stats().not_decided == 5 * b_keys.size());
  CHECK(peer(a, "b").breaker == BreakerState::kClosed);  // b answers: it is not down
}

TEST_CASE("with owner and stand-in down, the share policy decides with limit / members") {
  TestNode a("a", fastOptions()), b("b", fastOptions()), c("c", fastOptions());
  publishRing({&a, &b, &c}, {&a, &b, &c});
  const Ring ring({"a", "b", "c"});
  std::vector<std::string> keys;  // owned by b, runner-up c
  for (int i = 0; keys.size() < 10 && i < 100'000; ++i) {
    const std::string k = "user:" + std::to_string(i);
    const std::uint32_t slot = slotOf("", k);
    if (ring.ownerOf(slot) == "b" && ring.members()[ring.runnerUpIndex(slot)] == "c") {
      keys.push_back(k);
    }
  }
  REQUIRE(keys.size() == 10);
  b.rpc->stop();
  b.rpc.reset();
  c.rpc->stop();
  c.rpc.reset();
  std::vector<CheckArgs> all;
  for (const auto& k : keys) all.push_back(inlineCheck(k, 10));
  std::vector<int> allowed(keys.size());
  for (int round = 0; round < 6; ++round) {
    const auto out = a.check(all);
    for (std::size_t i = 0; i < out.size(); ++i) {
      REQUIRE(out[i].ok());
      CHECK(out[i]->route == RouteKind::kDegraded);
      allowed[i] += out[i]->allowed ? 1 : 0;
    }
  }
  for (int n : allowed) CHECK(n == 3);  // share: 10 / 3 members
  CHECK(a.forwarder->stats().degraded == 6 * keys.size());
}

TEST_CASE("degraded policies allow and deny are per rule") {
  Rule open{"open",
            {Algorithm::kFixedWindow, 1, std::chrono::hours(1), 0},
            false,
            DegradedPolicy::kAllow};
  Rule closed{"closed",
              {Algorithm::kFixedWindow, 100, std::chrono::hours(1), 0},
              false,
              DegradedPolicy::kDeny};
  const RuleSet rules = RuleSet::make({open, closed}).value();
  TestNode a("a", fastOptions(), rules), b("b", fastOptions(), rules), c("c", fastOptions(), rules);
  publishRing({&a, &b, &c}, {&a, &b, &c});
  b.rpc->stop();  // owner and stand-in both down
  b.rpc.reset();
  c.rpc->stop();
  c.rpc.reset();
  // Keys owned by b or c under each rule's namespace (their stand-ins are down too, or a).
  Ring ring({"a", "b", "c"});
  const auto away = [&](std::string_view ns, const std::string& k) {
    const std::uint32_t slot = slotOf(ns, k);
    return ring.ownerOf(slot) != "a" && ring.members()[ring.runnerUpIndex(slot)] != "a";
  };
  std::string open_key, closed_key;
  for (int i = 0; open_key.empty() || closed_key.empty(); ++i) {
    const std::string k = "k" + std::to_string(i);
    if (open_key.empty() && away("open", k)) open_key = k;
    if (closed_key.empty() && away("closed", k)) closed_key = k;
  }
  CheckArgs o;
  o.key = open_key;
  o.rule = "open";
  CheckArgs d;
  d.key = closed_key;
  d.rule = "closed";
  for (int i = 0; i < 3; ++i) {  // limit 1, but degraded "allow" admits every one
    const auto out = a.check({o, d});
    REQUIRE(out[0].ok());
    CHECK(out[0]->allowed);
    CHECK(out[0]->route == RouteKind::kDegraded);
    REQUIRE(out[1].ok());
    CHECK_FALSE(out[1]->allowed);  // limit 100, but degraded "deny" refuses
    CHECK(out[1]->decision.retry_after > Duration(0));
  }
}

TEST_CASE("a ring change re-routes: the new owner decides, and the hop limit stops loops") {
  TestNode a("a", fastOptions()), b("b", fastOptions());
  publishRing({&a, &b}, {&a, &b});
  const auto b_keys = keysOwnedBy({"a", "b"}, "b", 5);
  std::vector<CheckArgs> args;
  for (const auto& k : b_keys) args.push_back(inlineCheck(k, 4));
  for (const auto& r : a.check(args)) CHECK(r->route == RouteKind::kForwarded);

  // a believes it owns everything now (b left): a decides b's keys itself.
  publishRing({&a}, {&a});
  for (const auto& r : a.check(args)) CHECK(r->route == RouteKind::kLocal);

  // Views disagree: a thinks b owns the keys, b thinks a does. A check that already passed the
  // hop limit is decided where it is instead of bouncing.
  publishRing({&a}, {&a, &b});
  {  // b's view: a ring of a and z without b, both at a's address; b sends everything to a
    auto view = std::make_shared<RingView>();
    view->ring = Ring({"a", "z"});
    view->rpc_address = {a.address(), a.address()};
    view->self = 7;  // not a member
    b.ring.publish(std::move(view));
  }
  std::vector<Result<CheckOutcome>> out;
  Forwarding f = a.router->checkBatch(args, kMaxHops, out);
  CHECK(f.empty());
  for (const auto& r : out) CHECK(r->route == RouteKind::kLocal);
  // Entering a fresh: a forwards to b (hops 1), b forwards back to a (hops 2), a decides: the
  // third of each key's 4 hits in a's store (b's holds only the first round's one).
  for (const auto& r : a.check(args)) {
    REQUIRE(r.ok());
    CHECK(r->route == RouteKind::kForwarded);
    CHECK(r->decision.remaining == 1);
  }
  CHECK(peer(b, "a").checks + peer(b, "z").checks == b_keys.size());
}

TEST_CASE(
    "concurrent checks from many threads through one node: the owner admits exactly the limit") {
  TestNode a("a", fastOptions()), b("b", fastOptions());
  publishRing({&a, &b}, {&a, &b});
  const auto hot = keysOwnedBy({"a", "b"}, "b", 1)[0];
  constexpr int kThreads = 4, kPerThread = 300;
  std::atomic<int> allowed{0}, forwarded{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        const auto r = a.check({inlineCheck(hot, 500)})[0];
        if (r.ok() && r->allowed) allowed.fetch_add(1);
        if (r.ok() && r->route == RouteKind::kForwarded) forwarded.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(allowed.load() == 500);
  CHECK(forwarded.load() == kThreads * kPerThread);
}

TEST_CASE("stopping the forwarder answers what it holds and decides later checks at once") {
  TestNode a("a", fastOptions());
  FrozenListener b;  // takes the batch and never answers: its checks stay in flight
  publishRingAt({&a}, {"a", "b"}, {a.address(), b.address()});
  const auto b_keys = keysOwnedBy({"a", "b"}, "b", 3);
  std::vector<CheckArgs> args;
  for (const auto& k : b_keys) args.push_back(inlineCheck(k, 4));
  std::vector<Result<CheckOutcome>> out;
  Forwarding held = a.router->checkBatch(args, 0, out);
  REQUIRE(held.checks.size() == args.size());
  auto sink = std::make_shared<Collect>(args.size());
  a.router->forward(std::move(held), sink);
  const auto until = SteadyClock::now() + 10s;  // a bound, not a pause
  while (peer(a, "b").checks < args.size() && SteadyClock::now() < until) {
    std::this_thread::yield();
  }
  REQUIRE(peer(a, "b").checks == args.size());  // sent, and unanswered (T is 2 s here)

  a.forwarder->stop();  // answers each held check once, by the degraded policy
  for (const auto& r : sink->wait(args.size())) {
    REQUIRE(r.ok());
    CHECK(r->route == RouteKind::kDegraded);
  }
  for (const auto& r : a.check(args)) {  // and later ones at once, on the calling thread
    REQUIRE(r.ok());
    CHECK(r->route == RouteKind::kDegraded);
  }
  CHECK(peer(a, "b").checks == args.size());  // nothing more was sent to the silent owner
}

TEST_CASE("a check whose caller's deadline passed is not forwarded but answered as shed") {
  TestNode a("a", fastOptions()), b("b", fastOptions());
  publishRing({&a, &b}, {&a, &b});
  const auto b_keys = keysOwnedBy({"a", "b"}, "b", 2);
  CheckArgs late = inlineCheck(b_keys[0], 4);
  late.deadline = a.clock.monotonic() - 1ms;  // it waited past its budget before it was sent
  late.priority = Priority::kCritical;        // deadlines shed any priority
  CheckArgs timely = inlineCheck(b_keys[1], 4);
  timely.deadline = a.clock.monotonic() + 1h;
  const auto out = a.check({late, timely});
  REQUIRE(out[0].ok());
  CHECK(out[0]->shed == ShedReason::kDeadline);
  CHECK(out[0]->priority == Priority::kCritical);
  CHECK(out[0]->allowed);  // the rule's overload policy (inline limits: allow)
  REQUIRE(out[1].ok());
  CHECK_FALSE(out[1]->shed);
  CHECK(out[1]->route == RouteKind::kForwarded);
  CHECK(b.store->stats().entries == 1);  // only the timely check reached its owner
}

// The client library's routing: in-process nodes (Store + LimiterService + RpcServer on port 0)
// whose nodeInfo describes one cluster. The fake nodes do not forward, so a node's own check count
// says exactly which checks the client sent to it.
#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/rpc/rpc_server.h"
#include "daemon/service/limiter_service.h"
#include "gossip/ring.h"
#include "limiter/clock.h"
#include "limiter/key.h"
#include "throttlex/client.h"

namespace tc = throttlex::client;
using namespace std::chrono_literals;
// Real time (these tests run real sockets and threads), read through the clock adapter.
struct SteadyClock {
  static throttlex::Instant now() {
    static const throttlex::SystemClock real;
    return real.monotonic();
  }
};

namespace {

// One node; its nodeInfo reports `id` and the cluster's member list as it is at that moment.
struct FakeNode {
  std::string id;
  throttlex::ManualClock clock{throttlex::Time(std::chrono::seconds(1'700'000'000))};
  std::unique_ptr<throttlex::Store> store = throttlex::Store::make({100'000, 64}).value();
  std::unique_ptr<throttlex::LimiterService> service;
  std::unique_ptr<throttlex::RpcServer> server;

  FakeNode(std::string node_id, throttlex::NodeInfoProvider info) : id(std::move(node_id)) {
    auto rules = throttlex::RuleSet::parseYaml(
        "rules:\n  - name: api\n    algorithm: token_bucket\n    limit: 100\n    period: 60s\n");
    REQUIRE(rules.ok());
    service = std::make_unique<throttlex::LimiterService>(*store, clock, std::move(*rules), "");
    throttlex::RpcServerOptions options;
    options.bind_address = "127.0.0.1";
    options.port = 0;
    auto started = throttlex::RpcServer::start(options, *service, std::move(info), nullptr);
    REQUIRE(started.ok());
    server = std::move(*started);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(server->port()); }
  std::uint64_t checks() const { return server->stats().checks; }
};

// N nodes "node-0".. that all report the same members (each alive unless setState says else).
// `in_cluster` false: they report no members at all, as a node outside any cluster does.
class Cluster {
 public:
  explicit Cluster(int n, bool in_cluster = true) : in_cluster_(in_cluster) {
    for (int i = 0; i < n; ++i) {
      const std::string id = "node-" + std::to_string(i);
      nodes_.push_back(std::make_unique<FakeNode>(id, [this, id] { return info(id); }));
    }
    std::lock_guard guard(mu_);
    for (const auto& node : nodes_) {
      throttlex::MemberInfo m;
      m.node_id = node->id;
      m.rpc_address = node->address();
      m.state = "alive";
      members_.push_back(m);
    }
  }

  FakeNode& operator[](std::size_t i) { return *nodes_[i]; }
  std::size_t size() const { return nodes_.size(); }
  std::vector<std::string> addresses() const {
    std::vector<std::string> out;
    for (const auto& node : nodes_) out.push_back(node->address());
    return out;
  }
  void setState(const std::string& id, const std::string& state) {
    std::lock_guard guard(mu_);
    for (auto& m : members_) {
      if (m.node_id == id) m.state = state;
    }
  }
  // The ring the nodes derive from the members they report: alive and suspect ones own slots.
  throttlex::Ring ring() {
    std::lock_guard guard(mu_);
    std::vector<std::string> live;
    for (const auto& m : members_) {
      if (m.state == "alive" || m.state == "suspect") live.push_back(m.node_id);
    }
    return throttlex::Ring(std::move(live));
  }
  std::vector<std::uint64_t> checks() const {
    std::vector<std::uint64_t> out;
    for (const auto& node : nodes_) out.push_back(node->checks());
    return out;
  }

 private:
  throttlex::NodeInfo info(const std::string& id) {  // on the nodes' RPC threads
    throttlex::NodeInfo i;
    i.node_id = id;
    std::lock_guard guard(mu_);
    if (in_cluster_) i.members = members_;
    return i;
  }

  const bool in_cluster_;
  std::mutex mu_;
  std::vector<throttlex::MemberInfo> members_;  // guarded by mu_
  std::vector<std::unique_ptr<FakeNode>> nodes_;
};

// 300 keys: inline limits (namespace "") and the named rule "api" (namespace "api").
std::vector<tc::CheckSpec> manyKeys() {
  std::vector<tc::CheckSpec> specs;
  for (int i = 0; i < 300; ++i) {
    tc::CheckSpec s;
    s.key = "user:" + std::to_string(i);
    if (i % 2 == 0) {
      s.rule = "api";
    } else {
      s.limit = 100;
      s.period = 60s;
    }
    specs.push_back(s);
  }
  return specs;
}

// How many of `specs` each node of `cluster` owns under `ring`.
std::vector<std::uint64_t> owned(Cluster& cluster, const throttlex::Ring& ring,
                                 const std::vector<tc::CheckSpec>& specs) {
  std::map<std::string, std::uint64_t> by_id;
  for (const auto& s : specs) ++by_id[ring.ownerOf(throttlex::slotOf(s.rule, s.key))];
  std::vector<std::uint64_t> out;
  for (std::size_t i = 0; i < cluster.size(); ++i) out.push_back(by_id[cluster[i].id]);
  return out;
}

std::vector<std::uint64_t> minus(std::vector<std::uint64_t> a,
                                 const std::vector<std::uint64_t>& b) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] -= b[i];
  return a;
}

// Every check of `specs`, each on its own (so that a failure shows which); each must be a node's
// answer within 30 s, never a fallback.
void checkAll(tc::Client& client, const std::vector<tc::CheckSpec>& specs) {
  std::vector<std::future<tc::CheckResult>> futures;
  for (const auto& s : specs) futures.push_back(client.checkAsync(s));
  for (std::size_t i = 0; i < futures.size(); ++i) {
    REQUIRE_MESSAGE(futures[i].wait_for(30s) == std::future_status::ready, specs[i].key);
    const tc::CheckResult r = futures[i].get();
    CHECK_MESSAGE(r.ok(), specs[i].key << ": " << r.error.message);
    CHECK_MESSAGE(!r.fallback, specs[i].key);
  }
}

// Polls `done` until it holds or `timeout` passes (for state the client reaches on its own thread).
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout = 10s) {
  const auto until = SteadyClock::now() + timeout;
  while (!done()) {
    if (SteadyClock::now() > until) return false;
    std::this_thread::yield();
  }
  return true;
}

std::unique_ptr<tc::Client> connect(tc::ClientOptions options) {
  options.deadline = 5s;  // generous: sanitizer builds are slow; deadlines have their own tests
  auto client = tc::Client::connect(std::move(options));
  REQUIRE_MESSAGE(client.ok(), (client.ok() ? "" : client.error().message));
  return std::move(*client);
}

std::unique_ptr<tc::Client> connect(std::vector<std::string> nodes) {
  tc::ClientOptions options;
  options.nodes = std::move(nodes);
  return connect(std::move(options));
}

}  // namespace

TEST_CASE("with a ring known, every check goes straight to the node owning its key") {
  Cluster cluster(3);
  auto client = connect(cluster.addresses());
  CHECK(client->stats().ring_members == 3);  // connect()'s nodeInfo described the cluster

  const auto specs = manyKeys();
  const auto expected = owned(cluster, cluster.ring(), specs);
  for (auto n : expected) REQUIRE(n > 0);  // else the test could not tell routing from failover

  checkAll(*client, specs);
  CHECK(cluster.checks() == expected);
  // A batch is split by owner just the same.
  const auto before = cluster.checks();
  const auto results = client->checkBatch(specs);
  for (const auto& r : results) CHECK((r.ok() && !r.fallback));
  CHECK(minus(cluster.checks(), before) == expected);

  const auto stats = client->stats();
  CHECK(stats.checks_to_owner == 2 * specs.size());
  CHECK(stats.checks_not_to_owner == 0);
}

TEST_CASE("a client given one address learns the others and routes to them") {
  Cluster cluster(3);
  auto client = connect({cluster[0].address()});
  CHECK(client->stats().ring_members == 3);
  const auto specs = manyKeys();
  checkAll(*client, specs);
  CHECK(cluster.checks() == owned(cluster, cluster.ring(), specs));
  CHECK(client->stats().checks_to_owner == specs.size());
}

TEST_CASE("a lazy client learns the ring on its first connection") {
  Cluster cluster(3);
  tc::ClientOptions o;
  o.nodes = {cluster[0].address()};
  o.lazy_connect = true;
  auto client = connect(o);
  CHECK(client->stats().ring_members == 0);
  checkAll(*client, {manyKeys()[0]});  // no ring yet: to node-0; connecting asks for the ring
  REQUIRE(eventually([&] { return client->stats().ring_members == 3; }));
  const auto before = cluster.checks();
  const auto specs = manyKeys();
  checkAll(*client, specs);
  CHECK(minus(cluster.checks(), before) == owned(cluster, cluster.ring(), specs));
}

TEST_CASE("when the owner stops, its keys are answered by the other nodes") {
  Cluster cluster(3);
  tc::ClientOptions o;
  o.nodes = cluster.addresses();
  o.ring_refresh = 20ms;
  auto client = connect(o);
  const auto specs = manyKeys();
  checkAll(*client, specs);  // every node has a connection now
  const auto ring = cluster.ring();
  const auto owned_by_1 = owned(cluster, ring, specs)[1];

  cluster[1].server->stop();  // gossip has not noticed: the members still say node-1 is alive
  const auto before = cluster.checks();
  const auto before_stats = client->stats();
  checkAll(*client, specs);
  const auto delta = minus(cluster.checks(), before);
  CHECK(delta[1] == 0);
  CHECK(delta[0] + delta[2] == specs.size());
  const auto stats = client->stats();
  CHECK(stats.nodes_marked_down > before_stats.nodes_marked_down);
  CHECK(stats.checks_not_to_owner - before_stats.checks_not_to_owner >= owned_by_1);
  CHECK(stats.fallbacks == 0);

  // Gossip suspects node-1: a suspect keeps its slots (as on the nodes), so nothing changes. The
  // caller's nodeInfo() teaches the client before it returns.
  cluster.setState("node-1", "suspect");
  REQUIRE(client->nodeInfo().ok());
  CHECK(client->stats().ring_members == 3);

  // Gossip declares node-1 dead: the client routes by the ring of the other two from the next
  // member list it hears (its refresh, or as here the caller's nodeInfo(), before it returns).
  cluster.setState("node-1", "dead");
  REQUIRE(client->nodeInfo().ok());
  CHECK(client->stats().ring_members == 2);
  const auto before_dead = cluster.checks();
  const auto not_to_owner = client->stats().checks_not_to_owner;
  checkAll(*client, specs);
  CHECK(minus(cluster.checks(), before_dead) == owned(cluster, cluster.ring(), specs));
  CHECK(client->stats().checks_not_to_owner == not_to_owner);
}

TEST_CASE("inspect and reset go to the key's owner") {
  Cluster cluster(3);
  auto client = connect(cluster.addresses());
  auto specs = manyKeys();
  specs.resize(30);
  for (std::size_t i = 0; i < specs.size(); ++i) {
    REQUIRE(client->check(specs[i]).ok());
    // Only the owner holds the key's state (the fake nodes do not forward).
    const auto ins = client->inspect(specs[i]);
    REQUIRE(ins.ok());
    CHECK_MESSAGE(ins->found, specs[i].key);
    const auto reset = client->reset(specs[i]);
    REQUIRE(reset.ok());
    CHECK_MESSAGE(*reset, specs[i].key);
  }
  CHECK(cluster.checks() == owned(cluster, cluster.ring(), specs));  // not all on one node
}

TEST_CASE("route_to_owner = false keeps the listed order") {
  Cluster cluster(3);
  tc::ClientOptions o;
  o.nodes = cluster.addresses();
  o.route_to_owner = false;
  auto client = connect(o);
  const auto specs = manyKeys();
  checkAll(*client, specs);
  CHECK(cluster.checks() == std::vector<std::uint64_t>{specs.size(), 0, 0});
  CHECK(client->stats().ring_members == 0);
  CHECK(client->stats().checks_to_owner == 0);
}

TEST_CASE("nodes in no cluster, or in a cluster of one, are used as without routing") {
  const auto specs = manyKeys();
  {
    Cluster solo(2, /*in_cluster=*/false);
    auto client = connect(solo.addresses());
    checkAll(*client, specs);
    CHECK(solo.checks() == std::vector<std::uint64_t>{specs.size(), 0});
    CHECK(client->stats().ring_members == 0);
    CHECK(client->stats().checks_not_to_owner == 0);
  }
  {
    Cluster one(1);
    auto client = connect(one.addresses());
    checkAll(*client, specs);
    CHECK(one.checks() == std::vector<std::uint64_t>{specs.size()});
    const auto stats = client->stats();
    CHECK(stats.ring_members == 0);
    CHECK(stats.checks_to_owner + stats.checks_not_to_owner == 0);
  }
}

TEST_CASE("ring_refresh must be positive") {
  tc::ClientOptions o;
  o.nodes = {"127.0.0.1:7400"};
  o.ring_refresh = 0ms;
  CHECK(tc::Client::connect(o).error().code == tc::ErrorCode::kInvalidArgument);
}

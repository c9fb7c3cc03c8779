// ClusterNode (daemon/node/cluster.h): real nodes gossiping over loopback (port 0) find each other,
// publish the ring of their alive members, and drop a member that leaves from it.
//
// Time: the nodes share a ManualClock that no test advances. Joins (a push/pull with each seed)
// and leaves (told to every live member over TCP at once) need no protocol time to pass, and with
// time standing still no probe can time out, so no member is ever suspected on a slow machine.
// The tests wait for each ring on a condition variable signalled from on_ring, with a bound.
//
// members() is read only after that node's leave() has returned: its thread has stopped, so the
// snapshot is final (a running node updates it just after calling on_ring).
#include <doctest/doctest.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/node/cluster.h"
#include "daemon/routing/ring_view.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

// Every ring one node published (on_ring), in order.
class RingWatch {
 public:
  void add(std::shared_ptr<const RingView> view) {
    std::lock_guard guard(mu_);
    rings_.push_back(std::move(view));
    cv_.notify_all();
  }
  // Waits until the latest ring published is of exactly `ids` (sorted); 20 s at most.
  std::shared_ptr<const RingView> waitFor(const std::vector<std::string>& ids) {
    std::unique_lock lock(mu_);
    const bool seen = cv_.wait_for(
        lock, 20s, [&] { return !rings_.empty() && rings_.back()->ring.members() == ids; });
    INFO("waiting for a ring of " << ids.size() << " members");
    REQUIRE(seen);
    return rings_.back();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<const RingView>> rings_;  // guarded by mu_
};

// One member: the ring holder and watch it publishes to (outliving it), then the node.
struct ClusterMember {
  explicit ClusterMember(std::string name) : id(std::move(name)) {}

  std::string id;
  RingHolder ring;
  RingWatch watch;
  std::unique_ptr<ClusterNode> node;

  std::string gossipAddress() const { return "127.0.0.1:" + std::to_string(node->port()); }
  std::string rpcAddress() const { return "rpc-" + id + ":7400"; }

  void start(const Clock& clock, const std::string& cluster, std::vector<std::string> seeds) {
    ClusterOptions o;
    o.cluster_name = cluster;
    o.node_id = id;
    o.bind_address = "127.0.0.1";
    o.advertise_host = "127.0.0.1";
    o.port = 0;
    o.seeds = std::move(seeds);
    o.timing = gossip::Timing::local();  // what `--gossip-timing local` picks (node/config.cc)
    o.meta.rpc_address = rpcAddress();
    o.meta.http_address = "http-" + id + ":8080";
    o.meta.protocol_version = 1;
    o.ring = &ring;
    o.on_ring = [w = &watch](std::shared_ptr<const RingView> view) { w->add(std::move(view)); };
    auto started = ClusterNode::start(std::move(o), clock);
    REQUIRE(started.ok());
    node = std::move(*started);
  }
};

// Checks a ring that `self` published: exactly `members`, `self` at its index, each member at the
// RPC address it announced, and the same ring in `self`'s holder.
void checkRing(const std::shared_ptr<const RingView>& view, const ClusterMember& self,
               const std::vector<const ClusterMember*>& members) {
  INFO("ring published by " << self.id);
  REQUIRE(view->ring.members().size() == members.size());
  for (std::size_t i = 0; i < members.size(); ++i) {
    CHECK(view->ring.members()[i] == members[i]->id);
    CHECK(view->rpc_address.at(i) == members[i]->rpcAddress());
  }
  CHECK(view->ring.members().at(view->self) == self.id);
  CHECK(self.ring.snapshot() == view);
}

// The state `members` gives member `id` ("" if it lists none).
std::string stateOf(const std::vector<MemberInfo>& members, const std::string& id) {
  for (const MemberInfo& m : members) {
    if (m.node_id == id) return m.state;
  }
  return "";
}

}  // namespace

TEST_CASE("two nodes: both publish a ring of both; when the joiner leaves, the seed drops it") {
  ManualClock clock;
  ClusterMember a("a"), b("b");
  a.start(clock, "cluster-test-two", {});
  b.start(clock, "cluster-test-two", {a.gossipAddress()});

  checkRing(a.watch.waitFor({"a", "b"}), a, {&a, &b});
  checkRing(b.watch.waitFor({"a", "b"}), b, {&a, &b});

  b.node->leave();
  const std::vector<MemberInfo> b_view = b.node->members();
  REQUIRE(b_view.size() == 2);
  CHECK(stateOf(b_view, "a") == "alive");
  CHECK(stateOf(b_view, "b") == "left");
  CHECK(b_view[0].gossip_address == a.gossipAddress());  // ordered by id: a first
  CHECK(b_view[0].rpc_address == a.rpcAddress());
  CHECK(b_view[0].http_address == "http-a:8080");
  const ClusterStats b_stats = b.node->stats();
  CHECK(b_stats.alive == 1);
  CHECK(b_stats.left == 1);

  checkRing(a.watch.waitFor({"a"}), a, {&a});
  a.node->leave();
  CHECK(stateOf(a.node->members(), "b") == "left");
}

TEST_CASE("three nodes: when the seed leaves, the two others each publish a ring without it") {
  ManualClock clock;
  ClusterMember a("a"), b("b"), c("c");
  a.start(clock, "cluster-test-three", {});
  b.start(clock, "cluster-test-three", {a.gossipAddress()});
  // Seeds are every member so far: each pair meets directly, not through gossip rounds (which
  // need time to pass).
  c.start(clock, "cluster-test-three", {a.gossipAddress(), b.gossipAddress()});

  for (ClusterMember* m : {&a, &b, &c})
    checkRing(m->watch.waitFor({"a", "b", "c"}), *m, {&a, &b, &c});

  a.node->leave();
  const std::vector<MemberInfo> a_view = a.node->members();
  CHECK(a_view.size() == 3);
  CHECK(stateOf(a_view, "a") == "left");
  CHECK(stateOf(a_view, "b") == "alive");
  CHECK(stateOf(a_view, "c") == "alive");

  checkRing(b.watch.waitFor({"b", "c"}), b, {&b, &c});
  checkRing(c.watch.waitFor({"b", "c"}), c, {&b, &c});

  b.node->leave();
  const std::vector<MemberInfo> b_view = b.node->members();
  CHECK(stateOf(b_view, "a") == "left");
  CHECK(stateOf(b_view, "b") == "left");
  CHECK(stateOf(b_view, "c") == "alive");
  checkRing(c.watch.waitFor({"c"}), c, {&c});
}

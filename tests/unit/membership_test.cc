// Membership (SWIM + Lifeguard) driven through the in-memory network in virtual time.
#include <doctest/doctest.h>

#include <limits>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gossip/codec.h"
#include "gossip/membership.h"
#include "gossip/sim_network.h"

using namespace throttlex;
using namespace throttlex::gossip;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

namespace {

constexpr const char* kCluster = "test-cluster";
// THROTTLEX_GOSSIP_SEED_OFFSET=N shifts every seed, to soak the simulations over many runs:
//   for i in $(seq 0 99); do THROTTLEX_GOSSIP_SEED_OFFSET=$i bin/membership_test || break; done
std::uint64_t seedOffset() {
  const char* e = std::getenv("THROTTLEX_GOSSIP_SEED_OFFSET");
  return e ? std::strtoull(e, nullptr, 10) : 0;
}

// N nodes on one SimNetwork, driven by a virtual-time loop.
class Harness {
 public:
  // `keyrings[i]`, where given, is node i's gossip keyring.
  Harness(std::size_t n, std::uint64_t seed, Timing timing = Timing::lan(),
          SimNetwork::LinkFaults faults = {},
          std::vector<std::shared_ptr<const Keyring>> keyrings = {})
      : net_(seed + seedOffset(), faults),
        timing_(timing),
        now_(seconds(1'700'000'000)),
        keyrings_(std::move(keyrings)) {
    for (std::size_t i = 0; i < n; ++i) add((seed + seedOffset()) * 1000 + i);
  }

  static std::string idOf(std::size_t i) { return "node-" + std::to_string(i); }
  static std::string addressOf(std::size_t i) { return "10.0.0." + std::to_string(i) + ":7946"; }

  // Every node but the first joins through node 0.
  void joinAll() {
    for (std::size_t i = 1; i < nodes_.size(); ++i) nodes_[i]->join({addressOf(0)}, now_);
  }

  void step(Duration d = milliseconds(10)) {
    now_ += d;
    net_.deliverUntil(now_);
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (crashed_[i]) continue;
      nodes_[i]->tick(now_);
      for (auto& e : nodes_[i]->takeEvents()) events_[i].push_back(std::move(e));
    }
  }
  void run(Duration d) {
    Time end = now_ + d;
    while (now_ < end) step();
  }
  // Runs until `done` holds (checked every 100 ms of virtual time); false if `limit` passes first.
  bool runUntil(const std::function<bool()>& done, Duration limit) {
    Time end = now_ + limit;
    while (now_ < end) {
      for (int i = 0; i < 10; ++i) step();
      if (done()) return true;
    }
    return false;
  }

  void crash(std::size_t i) {
    crashed_[i] = true;
    net_.detach(addressOf(i));
  }

  // Every running node sees `id` in `state`.
  bool allSee(const std::string& id, MemberState state) const {
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (crashed_[i] || idOf(i) == id) continue;
      auto m = nodes_[i]->member(id);
      if (!m || m->state != state) return false;
    }
    return true;
  }
  // Every running node sees every running node alive, and nothing else alive or suspect.
  bool converged() const {
    std::size_t running = 0;
    for (bool c : crashed_) running += c ? 0 : 1;
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (crashed_[i]) continue;
      if (nodes_[i]->count(MemberState::kAlive) != running) return false;
      if (nodes_[i]->count(MemberState::kSuspect) != 0) return false;
    }
    return true;
  }
  std::size_t countEvents(EventType type, const std::string& id) const {
    std::size_t n = 0;
    for (std::size_t i = 0; i < events_.size(); ++i) n += countEventsAt(i, type, id);
    return n;
  }
  // Events node `observer` has emitted about `id`.
  std::size_t countEventsAt(std::size_t observer, EventType type, const std::string& id) const {
    std::size_t n = 0;
    for (const auto& e : events_[observer]) n += e.type == type && e.member.id == id ? 1u : 0u;
    return n;
  }

  Membership& node(std::size_t i) { return *nodes_[i]; }
  SimNetwork& net() { return net_; }
  Time now() const { return now_; }
  std::size_t size() const { return nodes_.size(); }

 private:
  void add(std::uint64_t seed) {
    std::size_t i = nodes_.size();
    Options o;
    o.cluster = kCluster;
    o.id = idOf(i);
    o.address = addressOf(i);
    o.meta = NodeMeta{"10.0.0." + std::to_string(i) + ":7400",
                      "10.0.0." + std::to_string(i) + ":8080", 1};
    o.timing = timing_;
    o.seed = seed;
    if (i < keyrings_.size()) o.keyring = keyrings_[i];
    auto created = Membership::create(o, net_.transport(o.address), now_);
    REQUIRE(created.ok());
    nodes_.push_back(std::move(created.value()));
    crashed_.push_back(false);
    events_.emplace_back();
    Membership* m = nodes_.back().get();
    net_.attach(o.address, [m](const Packet& p, Time t) { m->receive(p, t); });
  }

  SimNetwork net_;
  Timing timing_;
  Time now_;
  std::vector<std::shared_ptr<const Keyring>> keyrings_;
  std::vector<std::unique_ptr<Membership>> nodes_;
  std::vector<bool> crashed_;
  std::vector<std::vector<Event>> events_;
};

void checkJoinConverges(std::size_t n, Duration bound) {
  Harness h(n, 7 + n);
  h.joinAll();
  Time start = h.now();
  CHECK(h.runUntil([&] { return h.converged(); }, bound));
  MESSAGE(n << " nodes converged after "
            << std::chrono::duration_cast<milliseconds>(h.now() - start).count()
            << " ms of virtual time");
  auto m = h.node(n - 1).member(Harness::idOf(0));
  REQUIRE(m);
  CHECK(m->meta.rpc_address == "10.0.0.0:7400");
  CHECK(m->meta.http_address == "10.0.0.0:8080");
  CHECK(m->meta.protocol_version == 1);
}

// The LAN preset's bound for declaring a crashed node dead in a small cluster: it is probed
// within a few periods (several nodes probe it, round-robin), then the suspicion runs out at
// most at suspicion_max_mult * suspicion_mult * period (shrinking with confirmations).
Duration lanDetectionBound(std::size_t n) {
  Timing t = Timing::lan();
  return t.protocol_period * 3 +
         suspicionTimeout(t.suspicion_mult, n, t.protocol_period) * t.suspicion_max_mult;
}

}  // namespace

TEST_CASE("five nodes joining through one seed converge") {
  checkJoinConverges(5, seconds(10));
}

TEST_CASE("twenty nodes joining through one seed converge") {
  checkJoinConverges(20, seconds(15));
}

TEST_CASE("a hundred nodes joining through one seed converge") {
  // Gossip alone usually gets there in a few seconds; a member that gossip missed is repaired by
  // the next push/pull, so the bound is one push/pull interval plus slack.
  checkJoinConverges(100, Timing::lan().push_pull_interval + seconds(15));
}

TEST_CASE("a crashed node is declared dead by everyone within the LAN bound") {
  Harness h(5, 11);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  Time crashed_at = h.now();
  h.crash(3);
  REQUIRE(h.runUntil([&] { return h.allSee("node-3", MemberState::kDead); }, lanDetectionBound(5)));
  Duration took = h.now() - crashed_at;
  MESSAGE("5 nodes, LAN preset: crash declared dead by all after "
          << std::chrono::duration_cast<milliseconds>(took).count() << " ms");
  CHECK(took <= seconds(10));  // "a few seconds" with confirmations from the other nodes
  CHECK(h.countEvents(EventType::kSuspect, "node-3") > 0);
  CHECK(h.countEvents(EventType::kDead, "node-3") == 4);
  CHECK(h.countEvents(EventType::kLeft, "node-3") == 0);
}

TEST_CASE("no healthy node is declared dead under 5% packet loss over ten minutes") {
  SimNetwork::LinkFaults faults;
  faults.loss = 0.05;
  faults.duplicate = 0.01;
  faults.min_delay = milliseconds(1);
  faults.max_delay = milliseconds(20);
  Harness h(20, 23, Timing::lan(), faults);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(30)));
  h.run(minutes(10));
  for (std::size_t i = 0; i < h.size(); ++i) {
    CHECK(h.countEvents(EventType::kDead, Harness::idOf(i)) == 0);
  }
  std::uint64_t suspicions = 0;
  std::uint64_t refutations = 0;
  for (std::size_t i = 0; i < h.size(); ++i) {
    suspicions += h.node(i).counters().probe_failures;
    refutations += h.node(i).counters().refutations;
  }
  MESSAGE("5% loss, 20 nodes, 10 min: " << suspicions << " failed probes, " << refutations
                                        << " refutations");
  CHECK(h.runUntil([&] { return h.converged(); }, seconds(30)));
}

TEST_CASE("a suspected node that is alive refutes with a higher incarnation") {
  Harness h(5, 31);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  const std::string victim = Harness::addressOf(2);
  // Drop node-2's acks: its probers suspect it, but its gossip still gets out.
  h.net().setFilter([&](const std::string&, const Packet& p) {
    if (p.from != victim) return false;
    Message m;
    return decode(p.bytes, kCluster, 1u << 20, m) == DecodeStatus::kOk &&
           m.type == MessageType::kAck;
  });
  REQUIRE(
      h.runUntil([&] { return h.countEvents(EventType::kSuspect, "node-2") > 0; }, seconds(10)));
  h.net().setFilter(nullptr);
  CHECK(h.runUntil([&] { return h.converged(); }, seconds(20)));
  CHECK(h.node(2).counters().refutations > 0);
  CHECK(h.node(2).self().incarnation > 1);
  // Everyone ends with the refuting incarnation. A node that never heard the suspicion may hear
  // the refutation only through push/pull, hence the bound.
  auto refuted = [&] {
    for (std::size_t i = 0; i < h.size(); ++i) {
      auto m = h.node(i).member("node-2");
      if (!m || m->state != MemberState::kAlive || m->incarnation != h.node(2).self().incarnation) {
        return false;
      }
    }
    return true;
  };
  CHECK(h.runUntil(refuted, Timing::lan().push_pull_interval + seconds(10)));
  CHECK(h.countEvents(EventType::kDead, "node-2") == 0);
}

TEST_CASE("a partition into two halves heals into one view") {
  Harness h(10, 41);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(15)));
  std::vector<std::string> a, b;
  for (std::size_t i = 0; i < h.size(); ++i) (i < 5 ? a : b).push_back(Harness::addressOf(i));
  h.net().partition({a, b});
  // Each side declares the other dead.
  REQUIRE(h.runUntil(
      [&] {
        return h.node(0).count(MemberState::kDead) == 5 && h.node(9).count(MemberState::kDead) == 5;
      },
      minutes(2)));
  h.net().heal();
  // Push/pull towards dead members (every push_pull_interval) finds the healed link.
  CHECK(h.runUntil([&] { return h.converged(); }, minutes(3)));
}

namespace {
// The cut-off node declares the other four dead and queues that news for gossip. Once the link is
// back, its gossip and push/pull must not make the majority declare each other dead: they can
// still reach each other, so the news is a suspicion at most, which its subject refutes.
void checkHealWithoutFalseDeath(Timing timing, std::uint64_t seed) {
  Harness h(5, seed, timing);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(30)));
  std::vector<std::string> majority;
  for (std::size_t i = 0; i < 4; ++i) majority.push_back(Harness::addressOf(i));
  h.net().partition({majority, {Harness::addressOf(4)}});
  REQUIRE(h.runUntil(
      [&] {
        return h.node(4).count(MemberState::kDead) == 4 && h.allSee("node-4", MemberState::kDead);
      },
      minutes(5)));
  h.net().heal();
  REQUIRE(h.runUntil([&] { return h.converged(); }, minutes(3)));
  h.run(seconds(30));
  CHECK(h.converged());
  for (std::size_t i = 0; i < 4; ++i) {
    std::size_t deaths = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      deaths += h.countEventsAt(i, EventType::kDead, Harness::idOf(j));
    }
    INFO("node-" << i << " declared members of the majority dead");
    CHECK(deaths == 0);
  }
}
}  // namespace

TEST_CASE("a node cut off and healed does not get healthy members declared dead") {
  SUBCASE("lan") {
    checkHealWithoutFalseDeath(Timing::lan(), 71);
  }
  SUBCASE("local") {
    checkHealWithoutFalseDeath(Timing::local(), 72);
  }
  SUBCASE("wan") {
    checkHealWithoutFalseDeath(Timing::wan(), 73);
  }
}

TEST_CASE("a voluntary leave propagates as left, not dead") {
  Harness h(6, 53);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  h.node(4).leave(h.now());
  h.run(seconds(2));  // the leaving node keeps gossiping briefly, then stops
  h.crash(4);
  CHECK(h.runUntil([&] { return h.allSee("node-4", MemberState::kLeft); }, seconds(10)));
  h.run(seconds(60));
  CHECK(h.allSee("node-4", MemberState::kLeft));
  CHECK(h.countEvents(EventType::kDead, "node-4") == 0);
  CHECK(h.countEvents(EventType::kLeft, "node-4") == 5);
}

TEST_CASE("packets from another cluster are dropped and counted") {
  Harness h(2, 61);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(5)));
  Message ping;
  ping.sender_id = "intruder";
  ping.sender_address = "10.9.9.9:7946";
  ping.type = MessageType::kPing;
  ping.target_id = "node-0";
  Update fake;
  fake.id = "intruder";
  fake.address = "10.9.9.9:7946";
  fake.incarnation = 1;
  ping.updates.push_back(fake);
  auto before = h.node(0).counters().packets_sent;
  h.node(0).receive(Packet{"10.9.9.9:7946", Channel::kDatagram, encode(ping, "other-cluster")},
                    h.now());
  CHECK(h.node(0).counters().dropped_foreign_cluster == 1);
  CHECK(h.node(0).counters().packets_sent == before);  // no ack
  CHECK_FALSE(h.node(0).member("intruder"));
  // The same packet with our cluster name is accepted.
  h.node(0).receive(Packet{"10.9.9.9:7946", Channel::kDatagram, encode(ping, kCluster)}, h.now());
  CHECK(h.node(0).member("intruder"));
}

TEST_CASE("garbage and truncated packets are counted and dropped without harm") {
  Harness h(3, 71);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(5)));
  Membership& m = h.node(0);
  std::mt19937_64 rng(99);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<std::size_t> len(0, 2000);
  std::uint64_t dropped_before = m.counters().dropped_malformed;
  for (int i = 0; i < 3000; ++i) {
    std::vector<std::uint8_t> bytes(len(rng));
    for (auto& b : bytes) b = static_cast<std::uint8_t>(byte(rng));
    m.receive(Packet{"10.9.9.9:1", i % 2 ? Channel::kStream : Channel::kDatagram, bytes}, h.now());
  }
  // Truncations and bit flips of a real push/pull packet.
  Message pp;
  pp.sender_id = "node-1";
  pp.sender_address = Harness::addressOf(1);
  pp.type = MessageType::kPushPull;
  pp.reply = true;
  for (const auto& member : h.node(1).members()) {
    Update u;
    u.id = member.id;
    u.address = member.address;
    u.incarnation = member.incarnation;
    pp.members.push_back(u);
  }
  auto real = encode(pp, kCluster);
  // Every packet that does not decode is dropped and counted under exactly one reason.
  const auto dropped = [&m] {
    const auto& c = m.counters();
    return c.dropped_malformed + c.dropped_foreign_cluster + c.dropped_version +
           c.dropped_unauthenticated;
  };
  const std::uint64_t dropped_before_cuts = dropped();
  std::uint64_t malformed = 0;
  for (std::size_t cut = 0; cut < real.size(); ++cut) {
    std::vector<std::uint8_t> truncated(real.begin(),
                                        real.begin() + static_cast<std::ptrdiff_t>(cut));
    Message out;
    malformed += decode(truncated, kCluster, 1u << 20, out) != DecodeStatus::kOk ? 1u : 0u;
    m.receive(Packet{"10.9.9.9:1", Channel::kStream, truncated}, h.now());
  }
  CHECK(malformed >= real.size() / 2);  // a cut inside the payload can still parse as defaults
  CHECK(dropped() - dropped_before_cuts == malformed);
  const std::uint64_t dropped_before_flips = dropped();
  std::uint64_t flipped_bad = 0;
  for (int i = 0; i < 2000; ++i) {
    auto flipped = real;
    flipped[std::uniform_int_distribution<std::size_t>(0, real.size() - 1)(rng)] ^=
        static_cast<std::uint8_t>(1 + byte(rng) % 255);
    Message out;
    flipped_bad += decode(flipped, kCluster, 1u << 20, out) != DecodeStatus::kOk ? 1u : 0u;
    m.receive(Packet{"10.9.9.9:1", Channel::kStream, flipped}, h.now());
  }
  CHECK(dropped() - dropped_before_flips == flipped_bad);
  CHECK(m.counters().dropped_malformed > dropped_before + 2900);
  // Oversized datagrams are refused before parsing.
  std::uint64_t before = m.counters().dropped_malformed;
  m.receive(Packet{"10.9.9.9:1", Channel::kDatagram, std::vector<std::uint8_t>(5000, 0)}, h.now());
  CHECK(m.counters().dropped_malformed == before + 1);
  // The cluster still works.
  h.run(seconds(5));
  CHECK(h.node(1).member("node-0")->state == MemberState::kAlive);
  CHECK(h.node(0).member("node-2")->state == MemberState::kAlive);
}

TEST_CASE("encode and decode round-trip every message type") {
  Message m;
  m.sender_id = "a";
  m.sender_address = "h:1";
  m.type = MessageType::kPingReq;
  m.seq = 42;
  m.target_id = "b";
  m.target_address = "h:2";
  Update u;
  u.state = MemberState::kSuspect;
  u.id = "b";
  u.address = "h:2";
  u.incarnation = 7;
  u.meta = NodeMeta{"h:3", "h:4", 1};
  u.from = "a";
  m.updates = {u};
  auto bytes = encode(m, "c");
  Message out;
  REQUIRE(decode(bytes, "c", 1400, out) == DecodeStatus::kOk);
  CHECK(out.type == MessageType::kPingReq);
  CHECK(out.seq == 42);
  CHECK(out.target_address == "h:2");
  REQUIRE(out.updates.size() == 1);
  CHECK(out.updates[0].state == MemberState::kSuspect);
  CHECK(out.updates[0].incarnation == 7);
  CHECK(out.updates[0].meta == u.meta);
  CHECK(out.updates[0].from == "a");
  CHECK(decode(bytes, "c", bytes.size() - 1, out) == DecodeStatus::kTooLarge);
}

TEST_CASE("decode refuses lists and names past their bounds before copying them") {
  Message m;
  m.sender_id = "a";
  m.sender_address = "h:1";
  m.type = MessageType::kPushPull;
  Update u;
  u.state = MemberState::kAlive;
  u.address = "h:2";
  for (std::size_t i = 0; i < kMaxListEntries; ++i) {
    u.id = "n" + std::to_string(i);
    m.members.push_back(u);
  }
  Message out;
  const std::size_t any = 64u << 20;
  REQUIRE(decode(encode(m, "c"), "c", any, out) == DecodeStatus::kOk);
  CHECK(out.members.size() == kMaxListEntries);
  m.members.push_back(u);  // one more than a message may list
  CHECK(decode(encode(m, "c"), "c", any, out) == DecodeStatus::kMalformed);
  m.members.resize(1);
  m.updates = {u};
  m.updates[0].id = std::string(kMaxIdBytes, 'x');
  CHECK(decode(encode(m, "c"), "c", any, out) == DecodeStatus::kOk);
  m.updates[0].id += 'x';
  CHECK(decode(encode(m, "c"), "c", any, out) == DecodeStatus::kMalformed);
  m.updates[0].id = "b";
  m.updates[0].meta.rpc_address = std::string(kMaxAddressBytes + 1, '1');
  CHECK(decode(encode(m, "c"), "c", any, out) == DecodeStatus::kMalformed);
  m.updates.clear();
  m.sender_id = std::string(kMaxIdBytes + 1, 's');
  CHECK(decode(encode(m, "c"), "c", any, out) == DecodeStatus::kMalformed);
}

TEST_CASE("an alive update at the highest incarnation cannot wrap the refuting node to 0") {
  Harness h(3, 97);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  // A forged "node-1 is alive at 2^64-1, here" from an address that is not a member.
  Message forged;
  forged.sender_id = "intruder";
  forged.sender_address = "10.0.0.99:7946";
  forged.type = MessageType::kGossip;
  Update u;
  u.state = MemberState::kAlive;
  u.id = Harness::idOf(1);
  u.address = "10.0.0.99:7946";
  u.incarnation = std::numeric_limits<std::uint64_t>::max();
  forged.updates = {u};
  h.net()
      .transport("10.0.0.99:7946")
      .send(Harness::addressOf(1), Channel::kDatagram, encode(forged, kCluster));
  REQUIRE(h.runUntil([&] { return h.node(1).counters().refutations > 0; }, seconds(5)));
  CHECK(h.node(1).self().incarnation == std::numeric_limits<std::uint64_t>::max());
}

TEST_CASE("with a keyring, spoofed alive, suspect and left from a node without it change nothing") {
  auto ring = std::make_shared<Keyring>();
  REQUIRE(ring->install(generateKey()).ok());
  Harness h(3, 103, Timing::lan(), {}, {ring, ring, ring});
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  // The attacker knows the protocol and the cluster name, but holds another key, or none.
  Keyring wrong;
  REQUIRE(wrong.install(generateKey()).ok());
  auto send = [&](MemberState state, std::uint64_t incarnation, const Security& security) {
    Message forged;
    forged.sender_id = "intruder";
    forged.sender_address = "10.0.0.99:7946";
    forged.type = MessageType::kPing;
    forged.target_id = Harness::idOf(0);
    Update u;
    u.state = state;
    u.id = Harness::idOf(1);
    u.address = "10.0.0.99:7946";
    u.incarnation = incarnation;
    u.meta = NodeMeta{"10.0.0.99:7400", "10.0.0.99:8080", 1};
    u.from = "intruder";
    forged.updates = {u};
    h.net()
        .transport("10.0.0.99:7946")
        .send(Harness::addressOf(0), Channel::kDatagram, encode(forged, kCluster, security));
  };
  std::size_t replies = 0;
  h.net().attach("10.0.0.99:7946", [&](const Packet&, Time) { ++replies; });
  for (const Security& security : {Security{}, Security{&wrong}}) {
    send(MemberState::kAlive, std::numeric_limits<std::uint64_t>::max(), security);
    send(MemberState::kSuspect, 1000, security);
    send(MemberState::kLeft, 1000, security);
  }
  h.run(milliseconds(100));
  CHECK(h.node(0).counters().dropped_unauthenticated == 6);
  auto m = h.node(0).member(Harness::idOf(1));
  REQUIRE(m);
  CHECK(m->state == MemberState::kAlive);
  CHECK(m->address == Harness::addressOf(1));
  CHECK(m->meta.rpc_address == "10.0.0.1:7400");
  CHECK_FALSE(h.node(0).member("intruder"));
  CHECK(replies == 0);  // nothing answers a packet that does not authenticate
  h.run(seconds(10));
  CHECK(h.converged());
  CHECK(h.countEvents(EventType::kLeft, Harness::idOf(1)) == 0);
}

TEST_CASE("keys rotate across five nodes without losing a member") {
  Key old_key = generateKey();
  Key new_key = generateKey();
  std::vector<std::shared_ptr<Keyring>> rings;
  std::vector<std::shared_ptr<const Keyring>> shared;
  for (int i = 0; i < 5; ++i) {
    rings.push_back(std::make_shared<Keyring>());
    REQUIRE(rings.back()->install(old_key).ok());
    shared.push_back(rings.back());
  }
  Harness h(5, 107, Timing::lan(), {}, shared);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  // Step by step, one node at a time, with gossip running between steps (as an operator would).
  for (auto& r : rings) {
    REQUIRE(r->install(new_key).ok());
    h.run(seconds(1));
  }
  for (auto& r : rings) {
    REQUIRE(r->use(keyIdOf(new_key)).ok());
    h.run(seconds(1));
  }
  for (auto& r : rings) {
    REQUIRE(r->remove(keyIdOf(old_key)).ok());
    h.run(seconds(1));
  }
  h.run(seconds(10));
  CHECK(h.converged());
  for (std::size_t i = 0; i < h.size(); ++i) {
    CHECK(h.node(i).counters().dropped_unauthenticated == 0);
    CHECK(h.countEvents(EventType::kSuspect, Harness::idOf(i)) == 0);
  }
}

TEST_CASE("news of members past max_members is dropped and counted, the known ones stay") {
  Harness h(3, 101);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  // One push/pull that invents 3,000 members (the decoder takes 4096 per message).
  Message flood;
  flood.sender_id = "intruder";
  flood.sender_address = "10.0.0.99:7946";
  flood.type = MessageType::kPushPull;
  for (int i = 0; i < 3000; ++i) {
    Update u;
    u.state = MemberState::kAlive;
    u.id = "invented-" + std::to_string(i);
    u.address = "10.9." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ":7946";
    flood.members.push_back(u);
  }
  h.net()
      .transport("10.0.0.99:7946")
      .send(Harness::addressOf(1), Channel::kStream, encode(flood, kCluster));
  REQUIRE(h.runUntil([&] { return h.node(1).counters().dropped_member_cap > 0; }, seconds(5)));
  CHECK(h.node(1).members().size() == 1024);
  CHECK(h.node(1).counters().dropped_member_cap == 3 + 3000 - 1024);
  for (std::size_t i = 0; i < h.size(); ++i) {
    const auto m = h.node(1).member(Harness::idOf(i));
    REQUIRE(m.has_value());
    CHECK(m->state == MemberState::kAlive);
  }
}

TEST_CASE("the suspicion timeout shrinks with confirmations down to its minimum") {
  Time t0(seconds(100));
  Suspicion s(t0, seconds(4), seconds(24), 2, "a");
  CHECK(s.deadline() == t0 + seconds(24));
  CHECK(s.confirm("b"));
  CHECK_FALSE(s.confirm("b"));
  CHECK(s.deadline() < t0 + seconds(24));
  CHECK(s.deadline() > t0 + seconds(4));
  CHECK(s.confirm("c"));
  CHECK(s.deadline() == t0 + seconds(4));
  CHECK(suspicionTimeout(4, 5, seconds(1)) == seconds(4));
  CHECK(suspicionTimeout(4, 100, seconds(1)) == seconds(8));
  CHECK(retransmitLimit(4, 5) == 4);
  CHECK(retransmitLimit(4, 100) == 12);
}

TEST_CASE("invalid options are refused by create()") {
  SimNetwork net(1, {});
  Options o;
  o.cluster = "c";
  o.id = "a";
  o.address = "h:1";
  CHECK(Membership::create(o, net.transport("h:1"), Time{}).ok());
  Options no_id = o;
  no_id.id.clear();
  CHECK_FALSE(Membership::create(no_id, net.transport("h:1"), Time{}).ok());
  Options bad_timing = o;
  bad_timing.timing.probe_timeout = bad_timing.timing.protocol_period;
  CHECK_FALSE(Membership::create(bad_timing, net.transport("h:1"), Time{}).ok());
}

TEST_CASE("new metadata reaches every member as an update") {
  Harness h(5, 83);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  h.node(1).updateMeta(NodeMeta{"10.0.0.1:7401", "10.0.0.1:8081", 1}, h.now());
  auto updated = [&] {
    for (std::size_t i = 0; i < h.size(); ++i) {
      auto m = h.node(i).member("node-1");
      if (!m || m->meta.rpc_address != "10.0.0.1:7401") return false;
    }
    return true;
  };
  CHECK(h.runUntil(updated, seconds(5)));
  CHECK(h.countEvents(EventType::kUpdated, "node-1") == 4);
}

TEST_CASE("dead members are forgotten after reap_after") {
  Timing t = Timing::lan();
  t.reap_after = std::chrono::minutes(2);
  Harness h(4, 97, t);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  h.crash(3);
  REQUIRE(h.runUntil([&] { return h.allSee("node-3", MemberState::kDead); }, seconds(30)));
  h.run(t.reap_after + t.push_pull_interval * 2);
  for (std::size_t i = 0; i < 3; ++i) CHECK_FALSE(h.node(i).member("node-3"));
}

TEST_CASE("every preset declares a crashed node dead within its bound") {
  for (auto [name, timing] : {std::pair{"local", Timing::local()}, std::pair{"lan", Timing::lan()},
                              std::pair{"wan", Timing::wan()}}) {
    Harness h(5, 101, timing);
    h.joinAll();
    REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(30)));
    Time crashed_at = h.now();
    h.crash(1);
    Duration bound = timing.protocol_period * 3 +
                     suspicionTimeout(timing.suspicion_mult, 5, timing.protocol_period) *
                         timing.suspicion_max_mult;
    CHECK(h.runUntil([&] { return h.allSee("node-1", MemberState::kDead); }, bound));
    MESSAGE(
        std::string(name) << " preset, 5 nodes: crash declared dead by all after "
                          << std::chrono::duration_cast<milliseconds>(h.now() - crashed_at).count()
                          << " ms (bound "
                          << std::chrono::duration_cast<milliseconds>(bound).count() << " ms)");
  }
}

TEST_CASE("encoded sizes stay within the datagram and stream bounds") {
  Message pp;
  pp.sender_id = "node-0";
  pp.sender_address = "10.0.0.0:7946";
  pp.type = MessageType::kPushPull;
  for (int i = 0; i < 100; ++i) {
    Update u;
    u.id = Harness::idOf(static_cast<std::size_t>(i));
    u.address = Harness::addressOf(static_cast<std::size_t>(i));
    u.incarnation = 3;
    u.meta = NodeMeta{"10.0.0.1:7400", "10.0.0.1:8080", 1};
    pp.members.push_back(u);
  }
  auto bytes = encode(pp, kCluster);
  MESSAGE("100-member push/pull: " << bytes.size() << " bytes");
  CHECK(bytes.size() < 16 * 1024);
  // A probe carries as many updates as the estimate lets in; the result fits a datagram.
  Harness h(30, 5);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(30)));
  std::size_t largest = 0;
  h.net().setFilter([&](const std::string&, const Packet& p) {
    if (p.channel == Channel::kDatagram) largest = std::max(largest, p.bytes.size());
    return false;
  });
  for (std::size_t i = 0; i < 10; ++i) h.node(i).updateMeta(NodeMeta{"x:1", "y:2", 1}, h.now());
  h.run(seconds(5));
  MESSAGE("largest datagram after 10 simultaneous updates: " << largest << " bytes");
  CHECK(largest <= Timing::lan().max_datagram_bytes);
}

TEST_CASE("indirect probes keep a member alive behind one broken link") {
  Harness h(6, 113);
  h.joinAll();
  REQUIRE(h.runUntil([&] { return h.converged(); }, seconds(10)));
  // node-0 and node-1 cannot reach each other directly in either direction; every other link
  // works, with slow and duplicated delivery.
  SimNetwork::LinkFaults broken;
  broken.loss = 1.0;
  h.net().setLink(Harness::addressOf(0), Harness::addressOf(1), broken);
  h.net().setLink(Harness::addressOf(1), Harness::addressOf(0), broken);
  SimNetwork::LinkFaults slow;
  slow.duplicate = 0.2;
  slow.min_delay = milliseconds(20);
  slow.max_delay = milliseconds(150);
  h.net().setDefaults(slow);
  h.run(std::chrono::minutes(3));
  CHECK(h.countEvents(EventType::kDead, "node-0") == 0);
  CHECK(h.countEvents(EventType::kDead, "node-1") == 0);
  CHECK(h.node(0).counters().indirect_probes > 0);
  CHECK(h.converged());
}

TEST_CASE(
    "a node joining a running cluster is known everywhere by gossip, not by the next push/pull") {
  // A newcomer's `alive` must reach every member through gossip, on a lossy, slow network too:
  // with memberlist's local multiplier (2 sends per update at n = 6) 1 seed in 100 waited for
  // the next push/pull, up to 17 s, and a loaded CI run timed out waiting for the view.
  SimNetwork::LinkFaults faults;
  faults.loss = 0.05;
  faults.min_delay = milliseconds(1);
  faults.max_delay = milliseconds(400);
  for (auto [name, timing] :
       {std::pair{"local", Timing::local()}, std::pair{"lan", Timing::lan()}}) {
    std::vector<Duration> took;
    for (std::uint64_t seed = 0; seed < 40; ++seed) {
      Harness h(6, 500 + seed, timing, faults);
      for (std::size_t i = 1; i < 5; ++i) h.node(i).join({Harness::addressOf(0)}, h.now());
      REQUIRE(h.runUntil(
          [&] {
            for (std::size_t i = 0; i < 5; ++i) {
              if (h.node(i).count(MemberState::kAlive) != 5) return false;
            }
            return true;
          },
          seconds(30)));
      h.run(seconds(5));  // broadcasts of the first joins have died out
      h.node(5).join({Harness::addressOf(0)}, h.now());
      Time start = h.now();
      CHECK(h.runUntil(
          [&] {
            return h.allSee(Harness::idOf(5), MemberState::kAlive) &&
                   h.node(5).count(MemberState::kAlive) == 6;
          },
          timing.push_pull_interval / 5));
      took.push_back(h.now() - start);
    }
    std::sort(took.begin(), took.end());
    MESSAGE(
        std::string(name) << ": the sixth node known everywhere after median "
                          << std::chrono::duration_cast<milliseconds>(took[took.size() / 2]).count()
                          << " ms, at most "
                          << std::chrono::duration_cast<milliseconds>(took.back()).count()
                          << " ms");
  }
}

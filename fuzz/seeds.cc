// Writes the binary seed corpora of the fuzz targets (fuzz/corpus/*): real encodings of every
// gossip message type, RPC check and checkBatch parameters, snapshot fields and values, and
// handoff entries, Envoy rate limit requests, made by the same code that sends them. The text seeds
// (http_api, rules_yaml) are written by hand. Usage: fuzz-seeds fuzz/corpus
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "daemon/slots/slot_keeper.h"
#include "envoy/service/ratelimit/v3/rls.pb.h"
#include "gossip/codec.h"
#include "limiter/key.h"
#include "limiter/lease.h"
#include "limiter/state.h"
#include "limiter/store.h"
#include "persistence/redis_layout.h"
#include "proto/throttlex.capnp.h"

using namespace throttlex;
namespace fs = std::filesystem;

namespace {

void write(const fs::path& dir, const std::string& name, std::span<const std::uint8_t> bytes) {
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

void write(const fs::path& dir, const std::string& name, const std::string& text) {
  write(dir, name, std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

void gossipSeeds(const fs::path& dir) {
  using namespace gossip;
  Update alive{MemberState::kAlive,
               "n2",
               "10.0.0.2:7946",
               3,
               NodeMeta{"10.0.0.2:7400", "10.0.0.2:8080", 1},
               ""};
  Update suspect{MemberState::kSuspect, "n3", "10.0.0.3:7946", 5, {}, "n1"};
  Message m;
  m.sender_id = "n1";
  m.sender_address = "10.0.0.1:7946";
  const MessageType types[] = {MessageType::kGossip, MessageType::kPing, MessageType::kPingReq,
                               MessageType::kAck, MessageType::kPushPull};
  int i = 0;
  for (MessageType t : types) {
    m.type = t;
    m.seq = 42;
    m.target_id = t == MessageType::kPing || t == MessageType::kPingReq ? "n2" : "";
    m.target_address = t == MessageType::kPingReq ? "10.0.0.2:7946" : "";
    m.join = t == MessageType::kPushPull;
    m.members =
        t == MessageType::kPushPull ? std::vector<Update>{alive, suspect} : std::vector<Update>{};
    m.updates = {alive, suspect};
    write(dir, "type-" + std::to_string(i++), encode(m, "fuzz"));
  }
}

void rpcSeeds(const fs::path& dir) {
  {
    capnp::MallocMessageBuilder b;
    auto p = b.initRoot<proto::Limiter::CheckBatchParams>();
    p.setVersion(1);
    p.setHops(1);
    p.setDecideByMs(1'700'000'000'000);
    auto checks = p.initChecks(2);
    checks[0].setKey("user:1");
    checks[0].setRule("api");
    checks[0].setHits(1);
    checks[1].setKey("user:2");
    auto l = checks[1].initLimit();
    l.setAlgorithm(proto::Algorithm::GCRA);
    l.setLimit(10);
    l.setPeriodMs(1000);
    l.setBurst(3);
    const auto words = capnp::messageToFlatArray(b);
    write(dir, "batch", words.asBytes());
  }
  {
    capnp::MallocMessageBuilder b;
    auto p = b.initRoot<proto::Limiter::CheckParams>();
    p.setVersion(1);
    auto r = p.initRequest();
    r.setKey("user:1");
    auto l = r.initLimit();
    l.setAlgorithm(proto::Algorithm::TOKEN_BUCKET);
    l.setLimit(5);
    l.setPeriodMs(60'000);
    const auto words = capnp::messageToFlatArray(b);
    write(dir, "one", words.asBytes());
  }
}

// A peer's digests and an application's reports (daemon/adaptive/wire.h), and report bodies.
void adaptiveSeeds(const fs::path& dir) {
  {
    capnp::MallocMessageBuilder b;
    auto p = b.initRoot<proto::Limiter::AdaptiveExchangeParams>();
    p.setVersion(1);
    p.setFrom("node-1");
    auto digests = p.initDigests(2);
    digests[0].setRule("backend");
    auto buckets = digests[0].initBuckets(3);
    buckets.set(0, std::uint64_t{230} << 32 | 40);
    buckets.set(1, std::uint64_t{260} << 32 | 9);
    buckets.set(2, std::uint64_t{300} << 32 | 1);
    auto outcomes = digests[0].initOutcomes(4);
    outcomes.set(0, 45);
    outcomes.set(2, 5);
    digests[0].setAdmitted(50);
    digests[0].setLimited(100);
    digests[0].setKnownLimit(600);
    digests[1].setRule("other");
    const auto words = capnp::messageToFlatArray(b);
    write(dir, "digests", words.asBytes());
  }
  {
    capnp::MallocMessageBuilder b;
    auto p = b.initRoot<proto::Limiter::ReportParams>();
    p.setVersion(1);
    auto reports = p.initReports(2);
    reports[0].setRule("backend");
    reports[0].setLatencyNs(250'000'000);
    reports[1].setRule("backend");
    reports[1].setOutcome(proto::ReportOutcome::TIMEOUT);
    const auto words = capnp::messageToFlatArray(b);
    write(dir, "reports", words.asBytes());
  }
  write(dir, "body-one", std::string(R"({"rule":"backend","latency_ms":250,"outcome":"ok"})"));
  write(
      dir, "body-batch",
      std::string(
          R"({"reports":[{"rule":"backend","latency_ms":12.5},{"rule":"b","outcome":"timeout"}]})"));
}

// Real states of every algorithm, as a store holds them after a few checks.
std::vector<StoredEntry> someEntries() {
  auto store = Store::make({1024, 1}).value();
  const Time now{std::chrono::seconds(1'700'000'000)};
  std::vector<Limit> limits;
  for (int a = 1; a <= kAlgorithmCount; ++a) {
    limits.push_back(
        Limit::make({static_cast<Algorithm>(a), 5, std::chrono::seconds(60), 0}).value());
  }
  std::vector<CheckRequest> requests;
  for (std::size_t i = 0; i < limits.size(); ++i) {
    requests.push_back({hashKey("", "k" + std::to_string(i), limits[i]), &limits[i], 2});
  }
  std::vector<Decision> decisions(requests.size());
  store->checkBatch(requests, now, decisions);
  SlotSet all;
  all.set();
  return store->collect(all, now, false);
}

void snapshotSeeds(const fs::path& dir) {
  int i = 0;
  for (const StoredEntry& e : someEntries()) {
    const std::string field = persistence::redis_layout::encodeField(e.key);
    const std::string value = persistence::redis_layout::encodeValue(e.state, e.state.expiryMs());
    // The target splits at the first byte's value modulo the size: make it split here.
    std::string seed = field + value;
    seed[0] = static_cast<char>(field.size());
    write(dir, "entry-" + std::to_string(i++), seed);
  }
}

void handoffSeeds(const fs::path& dir) {
  const auto entries = someEntries();
  write(dir, "entries", SlotKeeper::encode(entries));
}

// Concurrency states as a node holds them: a counter with leases of two generations, a lease
// entry and its tombstone, each pair followed by the limit's shape and a few operations.
void leaseSeeds(const fs::path& dir) {
  const Limit limit =
      Limit::make({Algorithm::kConcurrency, 5, std::chrono::seconds(30), 0}).value();
  auto store = Store::make({1024, 1}).value();
  const Time now{std::chrono::seconds(1'700'000'000)};
  const KeyHash key = hashKey("db", "k", limit);
  (void)store->acquire(key, limit, 2, 7, now);
  (void)store->acquire(key, limit, 1, 8, now + std::chrono::seconds(12));
  Decision counter;
  (void)store->release(key, limit, 8, now + std::chrono::seconds(13), counter);
  const State count = store->get(key).value();
  const State lease = store->get(leaseKey(key, 7)).value();
  const State tombstone = store->get(leaseKey(key, 8)).value();
  auto seed = [&](const State& a, const State& b) {
    std::string out;
    for (const std::uint64_t w :
         {a.w0, a.w1, b.w0, b.w1, std::uint64_t{5} | (std::uint64_t{30'000} << 16)}) {
      out.append(reinterpret_cast<const char*>(&w), sizeof w);
    }
    out += std::string("\x00\x08\x01\x02\x03\x04\xff\x00", 8);
    return out;
  };
  write(dir, "counter-lease", seed(count, lease));
  write(dir, "counter-tombstone", seed(count, tombstone));
  write(dir, "counter-counter", seed(count, count));
}

// Envoy's RateLimitRequest as Envoy sends it: nested descriptors, a wildcard value, an override,
// hits_addend on the request and on a descriptor.
void rlsSeeds(const fs::path& dir) {
  using envoy::service::ratelimit::v3::RateLimitRequest;
  auto add = [](RateLimitRequest& r, std::vector<std::pair<std::string, std::string>> entries) {
    auto* d = r.add_descriptors();
    for (auto& [k, v] : entries) {
      auto* e = d->add_entries();
      e->set_key(k);
      e->set_value(v);
    }
    return d;
  };
  RateLimitRequest one;
  one.set_domain("mongo_cps");
  add(one, {{"database", "users"}});
  write(dir, "one", one.SerializeAsString());
  RateLimitRequest nested;
  nested.set_domain("messaging");
  nested.set_hits_addend(2);
  add(nested, {{"message_type", "marketing"}, {"to_number", "2061234567"}});
  add(nested, {{"to_number", "2061234567"}});
  add(nested, {{"key1", "value42"}})->mutable_hits_addend()->set_value(3);
  add(nested, {{"key2", "x"}});
  auto* over = add(nested, {{"ldap", "y"}});
  over->mutable_limit()->set_requests_per_unit(7);
  over->mutable_limit()->set_unit(envoy::type::v3::RateLimitUnit::MINUTE);
  write(dir, "nested", nested.SerializeAsString());
}

}  // namespace

// A peer's rules: a file of either shape, then a change that sets a rule and one that deletes.
void rulesSyncSeeds(const fs::path& dir) {
  capnp::MallocMessageBuilder b;
  auto p = b.initRoot<proto::Limiter::SyncRulesParams>();
  p.setVersion(1);
  p.setFrom("node-1");
  auto doc = p.initDoc();
  doc.setOrigin("node-1");
  doc.setMadeMs(1'700'000'000'000);
  auto sources = doc.initSources(2);
  sources[0].setName("rules.yaml");
  sources[0].setText(
      "rules:\n  - {name: api, algorithm: gcra, limit: 10, period: 1m, burst: 20}\n"
      "  - {name: jobs, algorithm: concurrency, limit: 5, lease_ttl: 30s}\n");
  sources[1].setName("envoy.yaml");
  sources[1].setText(
      "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit:\n"
      "      unit: minute\n      requests_per_unit: 5\n");
  auto changes = doc.initChanges(2);
  changes[0].setRule("web");
  changes[0].setYaml("{name: \"web\", algorithm: fixed_window, limit: 3, period: 1h}");
  changes[1].setRule("api");
  doc.initVersion().setCounter(2);
  const auto words = capnp::messageToFlatArray(b);
  write(dir, "doc", words.asBytes());
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz-seeds CORPUS_DIR (fuzz/corpus)\n");
    return 2;
  }
  const fs::path root(argv[1]);
  gossipSeeds(root / "gossip_decode");
  rpcSeeds(root / "rpc_check_request");
  adaptiveSeeds(root / "adaptive_wire");
  snapshotSeeds(root / "snapshot_value");
  handoffSeeds(root / "handoff_entries");
  rlsSeeds(root / "rls_request");
  leaseSeeds(root / "lease_state");
  rulesSyncSeeds(root / "rules_sync");
  std::printf("seeds written under %s\n", argv[1]);
  return 0;
}

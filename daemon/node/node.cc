#include "daemon/node/node.h"

#include <sys/resource.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/adaptive/controller.h"
#include "daemon/adaptive/exchange.h"
#include "daemon/adaptive/exchange_client.h"
#include "daemon/base/log.h"
#include "daemon/http/http_api.h"
#include "daemon/http/http_server.h"
#include "daemon/loop/kj_on_asio.h"
#include "daemon/metrics/metrics.h"
#include "daemon/node/cluster.h"
#include "daemon/node/keyring_file.h"
#include "daemon/rls/rls_server.h"
#include "daemon/routing/forwarder.h"
#include "daemon/routing/ring_view.h"
#include "daemon/routing/router.h"
#include "daemon/rpc/rpc_server.h"
#include "daemon/rules_sync/rules_sync.h"
#include "daemon/rules_sync/sync_client.h"
#include "daemon/service/limiter_service.h"
#include "daemon/service/sweeper.h"
#include "daemon/slots/handoff_client.h"
#include "daemon/slots/slot_keeper.h"
#include "limiter/mutex.h"
#include "persistence/redis_store.h"
#include "persistence/snapshot_writer.h"

namespace throttlex {
namespace {

// Every state a check changed goes to the snapshot writer (newest wins; no I/O here).
class SnapshotObserver final : public StoreObserver {
 public:
  explicit SnapshotObserver(persistence::SnapshotWriter& writer) : writer_(writer) {}
  void changed(const KeyHash& key, const State& state) override {
    writer_.markDirty(slotOf(key), key, state, state.expiryMs());
  }

 private:
  persistence::SnapshotWriter& writer_;
};

// Admin flushes (throttlectl snapshot) run on threads of their own (a flush waits for Redis),
// joined once finished or at shutdown.
class Flushes {
 public:
  explicit Flushes(persistence::SnapshotWriter& writer) : writer_(writer) {}
  ~Flushes() { join(); }
  void start(std::function<void(Result<SnapshotOutcome>)> done) {
    MutexLock guard(mu_);
    // Join the flushes that have finished (each marks itself), so repeated calls hold no threads.
    for (auto it = threads_.begin(); it != threads_.end();) {
      if (it->finished->load()) {
        it->thread.join();
        it = threads_.erase(it);
      } else {
        ++it;
      }
    }
    auto finished = std::make_shared<std::atomic<bool>>(false);
    threads_.push_back({std::thread([this, finished, done = std::move(done)] {
                          flush(done);
                          finished->store(true);
                        }),
                        finished});
  }
  void join() {
    std::vector<Running> threads;
    {
      MutexLock guard(mu_);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.thread.join();
  }

 private:
  struct Running {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  void flush(const std::function<void(Result<SnapshotOutcome>)>& done) {
    const std::uint64_t before = writer_.stats().entries_written;
    const bool ok = writer_.flushOnce();
    const auto after = writer_.stats();
    if (!ok) {
      done(Error{ErrorCode::kUnavailable,
                 "the snapshot store did not take every entry (Redis unreachable, or slower "
                 "than the command deadline under this write load: try again); " +
                     std::to_string(after.pending) + " entries still pending"});
      return;
    }
    done(SnapshotOutcome{after.entries_written - before, after.pending});
  }

  persistence::SnapshotWriter& writer_;
  Mutex mu_;
  std::vector<Running> threads_ GUARDED_BY(mu_);
};

// After announcing its leave a node stays while checks still arrive over RPC: peers that have not
// heard of the leave yet keep forwarding here, and those checks are passed on to the slots' new
// owners. It goes once none came for kLingerQuiet, after kLingerMax at the latest.
constexpr auto kLingerQuiet = std::chrono::seconds(1);
constexpr auto kLingerMax = std::chrono::seconds(10);

void lingerWhileChecksArrive(const Clock& clock, const std::function<std::uint64_t()>& checks) {
  const Instant deadline = clock.monotonic() + kLingerMax;
  std::uint64_t seen = checks();
  Instant quiet_since = clock.monotonic();
  while (clock.monotonic() < deadline && clock.monotonic() - quiet_since < kLingerQuiet) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const std::uint64_t now_seen = checks();
    if (now_seen != seen) {
      seen = now_seen;
      quiet_since = clock.monotonic();
    }
  }
}

// Descriptors: the soft limit is raised to the hard one (as Go's runtime does at start); each API
// (HTTP, RPC) may hold at most half of what is left after a reserve for peers, Redis, gossip and
// the listeners, so a flood of connections is refused before descriptors run out.
std::size_t connectionCap(std::size_t configured) {
  rlimit l{};
  if (::getrlimit(RLIMIT_NOFILE, &l) != 0) return configured != 0 ? configured : 1024;
  if (l.rlim_cur < l.rlim_max) {
    rlimit raised = l;
    raised.rlim_cur = l.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) l = raised;
  }
  if (configured != 0) return configured;
  const std::size_t fds = l.rlim_cur == RLIM_INFINITY ? std::size_t{1} << 20 : l.rlim_cur;
  const std::size_t reserve = std::max<std::size_t>(64, fds / 8);
  return std::clamp<std::size_t>((fds > reserve ? fds - reserve : 0) / 2, 8, 10'000);
}

}  // namespace

struct Node::Parts {
  Parts(const Config& c, const Clock& k, std::function<void()> stop)
      : config(c), clock(k), request_stop(std::move(stop)) {}

  // Steps of start(), in order; each fails with a message naming the flag at fault.
  Status startSnapshots();
  Status startRouting(RuleSet rules);
  Status startApis();
  void setUpControl();
  Status startRpc(const NodeInfoProvider& node_info, std::size_t max_connections);
  Status startCluster();
  void makeExchange();
  void makeRulesSync();
  NodeInfo info() const;
  PersistenceStats persistenceStats() const;
  ClusterNode* clusterNode() const { return cluster_view.load(std::memory_order_acquire); }
  std::string address(const std::atomic<int>& port) const {
    return config.advertise + ":" + std::to_string(port.load(std::memory_order_relaxed));
  }

  // Constant after construction.
  const Config config;
  const Clock& clock;
  const std::function<void()> request_stop;
  const Instant started = clock.monotonic();

  // The components, in construction order (destroyed in reverse).
  std::unique_ptr<KeyringFile> keyring;   // with --gossip-keyring only
  std::shared_ptr<proto::TlsConfig> tls;  // with --tls-* only; reloaded on SIGHUP
  std::unique_ptr<Store> store;
  std::unique_ptr<persistence::RedisStore> redis;  // with --redis only, as the three below
  std::unique_ptr<persistence::SnapshotWriter> writer;
  std::unique_ptr<SnapshotObserver> observer;
  std::unique_ptr<Flushes> flushes;
  SlotKeeperOptions keeper_options;
  std::unique_ptr<SlotKeeper> keeper;
  std::unique_ptr<LimiterService> service;
  std::unique_ptr<AdaptiveController> controller;  // of the adaptive rules the ring gives here
  RingHolder ring;  // published by the cluster thread once membership is up
  std::unique_ptr<AdaptiveExchange> exchange;  // started with membership
  std::unique_ptr<RulesSync> rules_sync;       // started with membership
  std::unique_ptr<Forwarder> forwarder;
  std::unique_ptr<Router> router;
  std::unique_ptr<ClusterNode> cluster;
  std::atomic<ClusterNode*> cluster_view{nullptr};  // set once membership is up
  std::unique_ptr<Metrics> metrics;
  // The ports actually bound (they differ from the flags when a flag says 0); set as each
  // listener comes up, read by the RPC and HTTP threads.
  std::atomic<int> http_port{0}, rpc_port{0}, metrics_port{0};
  NodeControl control;
  std::unique_ptr<RpcServer> rpc;
  std::unique_ptr<HttpApi> api;
  std::unique_ptr<HttpServer> http;
  std::unique_ptr<RlsServer> rls;  // only with --rls-port
  std::unique_ptr<Sweeper> sweeper;
};

// Snapshots (docs/persistence.md): only with --redis. Checks never wait for Redis: the store
// tells the writer what changed, the writer's thread writes it behind.
Status Node::Parts::startSnapshots() {
  if (config.redis.empty()) return Ok{};
  persistence::RedisStoreOptions redis_options;
  redis_options.host = config.redis_host;
  redis_options.port = config.redis_port;
  redis_options.cluster = config.cluster_name;
  redis_options.user = config.redis_user;
  if (!config.redis_password_file.empty()) {
    std::ifstream in(config.redis_password_file);
    if (!in || !std::getline(in, redis_options.password) || redis_options.password.empty()) {
      return Error{
          ErrorCode::kInvalidArgument,
          "--redis-password-file: cannot read a password from " + config.redis_password_file};
    }
  }
  redis_options.on_event = [](const std::string& e) { logInfo("redis " + e); };
  auto made = persistence::RedisStore::make(redis_options, clock);
  if (!made) return Error{made.error().code, "--redis: " + made.error().message};
  redis = std::move(*made);
  persistence::SnapshotWriterOptions writer_options;
  writer_options.interval = std::chrono::milliseconds(config.snapshot_interval_ms);
  auto w = persistence::SnapshotWriter::make(*redis, clock, writer_options);
  if (!w) return Error{w.error().code, "snapshots: " + w.error().message};
  writer = std::move(*w);
  observer = std::make_unique<SnapshotObserver>(*writer);
  flushes = std::make_unique<Flushes>(*writer);
  store->setObserver(observer.get());
  writer->start();
  return Ok{};
}

// The slot keeper, the limiter service, and the forwarder and router that send checks of keys
// owned elsewhere to their owners. Until the first ring, everything is local.
Status Node::Parts::startRouting(RuleSet rules) {
  keeper_options.self_id = config.node_id;
  keeper_options.snapshots = redis.get();
  // Outgoing TLS (forwarded batches, handoffs) can be off while TLS is being turned on.
  const std::shared_ptr<const proto::TlsConfig> outgoing = config.tls_outgoing ? tls : nullptr;
  keeper_options.send = [tls = outgoing](const std::string& address, const std::string& from,
                                         std::span<const std::uint16_t> slots,
                                         std::span<const StoredEntry> entries,
                                         std::chrono::milliseconds timeout) {
    return sendHandoff(address, from, slots, entries, timeout, tls);
  };
  keeper_options.recovery_timeout = std::chrono::milliseconds(config.recovery_timeout_ms);
  keeper_options.lazy = config.lazy_recovery;
  // With seeds, wait for the cluster before deciding (a restarted member must not decide its old
  // keys alone while the others do); seeds that never answer leave it alone after 5 s.
  if (!config.join.empty()) keeper_options.join_timeout = std::chrono::seconds(5);
  keeper = std::make_unique<SlotKeeper>(keeper_options, *store, clock);
  service = std::make_unique<LimiterService>(*store, clock, std::move(rules), config.rules);
  controller = std::make_unique<AdaptiveController>(*service, clock);
  makeExchange();   // started once membership is up
  makeRulesSync();  // likewise
  ForwarderOptions forwarder_options;
  forwarder_options.owner_silence = std::chrono::milliseconds(config.owner_silence_ms);
  forwarder_options.tls = outgoing;
  auto f = Forwarder::start(forwarder_options, *service, ring, keeper.get());
  if (!f) return Error{f.error().code, "forwarder: " + f.error().message};
  forwarder = std::move(*f);
  router = std::make_unique<Router>(*service, &ring, forwarder.get(), keeper.get(),
                                    config.inline_limits);
  keeper->recoverAll();  // with --redis / --join: every slot waits for its snapshot / the cluster
  return Ok{};
}

PersistenceStats Node::Parts::persistenceStats() const {
  PersistenceStats p;
  p.has_store = redis != nullptr;
  if (redis) p.store = redis->stats();
  if (writer) p.writer = writer->stats();
  p.slots = keeper->stats();
  return p;
}

NodeInfo Node::Parts::info() const {
  NodeInfo i;
  i.node_id = config.node_id;
  i.http_address = address(http_port);
  i.rpc_address = address(rpc_port);
  i.metrics_address = config.metrics_advertise + ":" + std::to_string(metrics_port.load());
  i.uptime_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(clock.monotonic() - started).count());
  const StoreStats st = store->stats();
  i.keys = st.entries;
  i.evictions = st.evictions;
  i.rules = static_cast<std::uint32_t>(service->rules().size());
  const std::shared_ptr<const RulesDoc> doc = service->rulesDoc();
  i.rules_counter = doc->version.counter;
  i.rules_digest = doc->version.digest;
  i.rules_origin = doc->origin;
  i.rules_made_ms = doc->made_ms;
  if (ClusterNode* c = clusterNode()) i.members = c->members();
  PersistenceInfo& p = i.persistence;
  p.redis = config.redis;
  if (redis) p.connected = redis->stats().connected;
  if (writer) {
    const auto w = writer->stats();
    p.pending = w.pending;
    p.lag_ms = static_cast<std::uint64_t>(w.lag.count());
    p.written = w.entries_written;
    p.write_errors = w.write_errors;
  }
  p.slots = keeper->stats();
  return i;
}

// What the Admin RPC calls may do to this node (daemon/base/node_control.h).
void Node::Parts::setUpControl() {
  control.handoff = [this](const std::string& from, std::span<const std::uint16_t> slots,
                           std::span<const std::uint8_t> entries) {
    return keeper->receive(from, slots, entries);
  };
  if (flushes) {
    control.snapshot = [this](std::function<void(Result<SnapshotOutcome>)> done) {
      flushes->start(std::move(done));
    };
  }
  if (keyring) {
    control.keyring = [this](KeyringOp op, const std::string& key) {
      return keyring->apply(op, key);
    };
  }
  control.drain = [this]() -> Status {
    logInfo("drain requested over RPC");
    request_stop();  // the same path as a SIGTERM from outside
    return Ok{};
  };
}

// Bound here; served by the HTTP worker threads (startApis()).
Status Node::Parts::startRpc(const NodeInfoProvider& node_info, std::size_t max_connections) {
  RpcServerOptions rpc_options;
  rpc_options.max_connections = max_connections;
  rpc_options.bind_address = config.bind;
  rpc_options.port = config.rpc_port;
  rpc_options.threads = config.threads;
  rpc_options.hosted = true;
  rpc_options.idle_timeout = std::chrono::seconds(config.rpc_idle_timeout_s);
  rpc_options.control = &control;
  rpc_options.adaptive = controller.get();
  rpc_options.rules_sync = rules_sync.get();
  rpc_options.tls = tls;
  rpc_options.tls_required = config.tls_incoming_required;
  auto r = RpcServer::start(rpc_options, *router, node_info, metrics.get());
  if (!r) return Error{r.error().code, "--rpc-port: " + r.error().message};
  rpc = std::move(*r);
  rpc_port = rpc->port();
  return Ok{};
}

// Metrics, RPC and HTTP, bound in that order.
Status Node::Parts::startApis() {
  metrics = std::make_unique<Metrics>(Metrics::Options{
      config.node_id, kVersion, store.get(),
      [this] {
        ClusterNode* c = clusterNode();
        return c != nullptr ? c->stats() : ClusterStats{};
      },
      [this] { return forwarder->stats(); }, [this] { return persistenceStats(); },
      [this] {
        std::vector<AdaptiveRuleStats> rules = service->adaptiveStats();
        for (AdaptiveRuleStats& r : rules) r.controlled_here = controller->controls(r.rule);
        return rules;
      },
      [this] { return exchange->stats(); }, [this] { return rules_sync->stats(); }});
  auto metrics_bound = metrics->serve(config.metrics_bind, config.metrics_port, clock);
  if (!metrics_bound) {
    return Error{metrics_bound.error().code,
                 "--metrics-bind/--metrics-port: " + metrics_bound.error().message};
  }
  metrics_port = *metrics_bound;
  setUpControl();
  const NodeInfoProvider node_info = [this] { return info(); };
  const std::size_t max_connections = connectionCap(config.max_connections);
  logInfo("connections: at most " + std::to_string(max_connections) + " per API (HTTP, RPC)");
  if (Status s = startRpc(node_info, max_connections); !s) return s;

  const MembersProvider members = [this] {
    ClusterNode* c = clusterNode();
    return c != nullptr ? c->members() : std::vector<MemberInfo>{};
  };
  api = std::make_unique<HttpApi>(*service, metrics.get(), node_info, members, router.get());
  api->setListenerCheck(
      [this]() -> std::string { return rpc->listening() ? "" : "rpc listener stopped"; });
  HttpServerOptions http_options;
  http_options.max_connections = max_connections;
  http_options.bind_address = config.bind;
  http_options.port = config.http_port;
  http_options.threads = config.threads;
  // Each HTTP thread also serves RPC and forwards what it receives: one thread per check.
  OverloadOptions overload;
  overload.target = std::chrono::milliseconds(config.overload_target_ms);
  overload.interval = std::chrono::milliseconds(config.overload_interval_ms);
  http_options.thread_scope = forwardingThreads(
      *router, clock, [this](KjOnAsio& kj) { return rpc->host(kj); }, overload, metrics.get());
  HttpApi* handler = api.get();
  auto h = HttpServer::start(http_options, clock, [handler](HttpRequest& req, HttpRespond respond) {
    handler->handle(req, respond);
  });
  if (!h) return Error{h.error().code, "--http-port: " + h.error().message};
  http = std::move(*h);
  http_port = http->port();
  if (config.rls_port < 0) return Ok{};
  RlsServerOptions rls_options;
  rls_options.bind = config.bind;
  rls_options.port = static_cast<std::uint16_t>(config.rls_port);
  rls_options.response_headers = config.rls_response_headers;
  if (tls) rls_options.tls = {config.tls_ca, config.tls_cert, config.tls_key};
  auto g = RlsServer::start(rls_options, *router, metrics.get());
  if (!g) return Error{g.error().code, "--rls-port: " + g.error().message};
  rls = std::move(*g);
  return Ok{};
}

// Adaptive rules' digests go to their controllers (daemon/adaptive/exchange.h).
void Node::Parts::makeExchange() {
  const std::shared_ptr<const proto::TlsConfig> outgoing = config.tls_outgoing ? tls : nullptr;
  exchange = std::make_unique<AdaptiveExchange>(
      *service, *controller, &ring, clock,
      [tls = outgoing, from = config.node_id](const std::string& address,
                                              std::span<const RuleDigest> digests) {
        return sendDigests(address, from, digests, std::chrono::milliseconds(500), tls);
      });
}

// Rules changes go to every member (daemon/rules_sync/rules_sync.h).
void Node::Parts::makeRulesSync() {
  const std::shared_ptr<const proto::TlsConfig> outgoing = config.tls_outgoing ? tls : nullptr;
  rules_sync = std::make_unique<RulesSync>(
      *service, &ring,
      [tls = outgoing, from = config.node_id](const std::string& address, const RulesVersion& mine,
                                              const RulesDoc* doc) {
        return sendRules(address, from, mine, doc, std::chrono::milliseconds(1000), tls);
      },
      /*joining=*/!config.join.empty());
  service->setRulesOrigin(config.node_id, [this] { rules_sync->changed(); });
}

// Membership comes up after the APIs, so it can announce their bound addresses.
Status Node::Parts::startCluster() {
  ClusterOptions cluster_options;
  cluster_options.cluster_name = config.cluster_name;
  cluster_options.node_id = config.node_id;
  cluster_options.bind_address = config.bind;
  cluster_options.advertise_host = config.advertise;
  cluster_options.port = config.gossip_port;
  cluster_options.seeds = config.join;
  cluster_options.timing = config.gossip_timing;
  if (keyring) cluster_options.keyring = keyring->keyring();
  cluster_options.verify_incoming = config.gossip_verify_incoming;
  cluster_options.verify_outgoing = config.gossip_verify_outgoing;
  cluster_options.meta.protocol_version = 1;
  cluster_options.ring = &ring;
  cluster_options.on_ring = [this](std::shared_ptr<const RingView> view) {
    keeper->onRing(std::move(view));
  };
  cluster_options.meta.rpc_address = address(rpc_port);
  cluster_options.meta.http_address = address(http_port);
  auto joined = ClusterNode::start(cluster_options, clock);
  if (!joined) return Error{joined.error().code, "--gossip-port: " + joined.error().message};
  cluster = std::move(*joined);
  cluster_view.store(cluster.get(), std::memory_order_release);
  return Ok{};
}

Result<std::unique_ptr<Node>> Node::start(const Config& config, const Clock& clock,
                                          std::function<void()> request_stop) {
  auto rules = config.rules.empty() ? RuleSet::make({}) : RuleSet::loadFile(config.rules);
  if (!rules) return Error{rules.error().code, "--rules: " + rules.error().message};
  // Up to 1024 shards, and at least 1024 entries a shard: a shard is full at its share of
  // --max-keys, and small shares would fill (and refuse new keys) while others still have room.
  const std::size_t shards =
      std::max<std::size_t>(1, std::min<std::size_t>(1024, std::bit_floor(config.max_keys / 1024)));
  auto store = Store::make({config.max_keys, shards});
  if (!store) return Error{store.error().code, "--max-keys: " + store.error().message};

  auto parts = std::make_unique<Parts>(config, clock, std::move(request_stop));
  if (!config.gossip_keyring.empty()) {
    auto keyring = KeyringFile::load(config.gossip_keyring);
    if (!keyring)
      return Error{keyring.error().code, "--gossip-keyring: " + keyring.error().message};
    parts->keyring = std::move(*keyring);
    if (!config.gossip_verify_incoming || !config.gossip_verify_outgoing) {
      logWarn("gossip keyring loaded with verification off (incoming " +
              std::string(config.gossip_verify_incoming ? "on" : "off") + ", outgoing " +
              std::string(config.gossip_verify_outgoing ? "on" : "off") +
              "): only for turning keys on in a running cluster (docs/security.md)");
    }
  } else {
    logWarn(
        "no --gossip-keyring: gossip is unauthenticated, anyone who can reach the gossip port "
        "can change membership (docs/security.md; 'throttlectl keyring generate')");
  }
  const proto::TlsFiles tls_files{config.tls_ca, config.tls_cert, config.tls_key};
  if (tls_files.enabled()) {
    auto tls = proto::TlsConfig::load(tls_files);
    if (!tls)
      return Error{tls.error().code, "--tls-ca/--tls-cert/--tls-key: " + tls.error().message};
    parts->tls = std::move(*tls);
    if (!config.tls_incoming_required || !config.tls_outgoing) {
      logWarn(std::string("RPC TLS is being turned on:") +
              (config.tls_incoming_required
                   ? ""
                   : " plain connections are accepted, with every right;") +
              (config.tls_outgoing ? "" : " peers are reached in plain TCP;") +
              " finish with --tls-incoming-required=true --tls-outgoing=true (docs/security.md)");
    }
  } else {
    logWarn(
        "no --tls-cert: RPC is plain TCP and unauthenticated, anyone who can reach the RPC "
        "port may call Admin and hand off state (docs/security.md)");
  }
  parts->store = std::move(*store);
  parts->http_port = config.http_port;
  parts->rpc_port = config.rpc_port;
  parts->metrics_port = config.metrics_port;
  if (Status s = parts->startSnapshots(); !s) return s.error();
  if (Status s = parts->startRouting(std::move(*rules)); !s) return s.error();
  if (Status s = parts->startApis(); !s) return s.error();
  if (Status s = parts->startCluster(); !s) return s.error();
  parts->sweeper = std::make_unique<Sweeper>(*parts->store, clock);
  parts->exchange->start();
  parts->rules_sync->start();
  // A node that joins runs the cluster's rules, not its own file, before it reports ready.
  if (!config.join.empty() &&
      !parts->rules_sync->waitFirstRound(parts->keeper_options.join_timeout)) {
    logWarn("no member answered for the cluster's rules yet; running this node's rules file");
  }

  const auto& k = parts->keeper_options;
  if (parts->redis && !parts->keeper->waitStarted(std::max(k.startup_timeout, k.recovery_timeout) +
                                                  std::chrono::seconds(1))) {
    logWarn("recovery from Redis still running; serving what has arrived");
  }
  parts->api->setReady(true);
  logInfo("throttlexd " + std::string(kVersion) + " node " + config.node_id + " ready: http " +
          config.bind + ":" + std::to_string(parts->http->port()) + ", rpc " + config.bind + ":" +
          std::to_string(parts->rpc->port()) + ", metrics " + config.metrics_bind + ":" +
          std::to_string(parts->metrics_port.load()) + ", gossip " + config.bind + ":" +
          std::to_string(parts->cluster->port()) +
          (parts->rls ? ", rls " + config.bind + ":" + std::to_string(parts->rls->port()) : "") +
          ", " + std::to_string(config.threads) + " threads, " +
          std::to_string(parts->service->rules().size()) + " rules");
  return std::unique_ptr<Node>(new Node(std::move(parts)));
}

Node::Node(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {}

Node::~Node() {
  stop();
}

Result<bool> Node::reloadTls() {
  if (!parts_->tls) return false;
  if (Status s = parts_->tls->reload(); !s) return s.error();
  return true;
}

Result<std::size_t> Node::reloadRules() {
  return parts_->service->reloadRules();
}

void Node::stop() {
  if (std::exchange(stopped_, true)) return;
  Parts& p = *parts_;
  p.api->setReady(false);
  // Drain: the slots' state goes to the nodes that take them over, before the others learn that
  // this node leaves (checks that still arrive here are passed on to them).
  const std::size_t handed = p.keeper->drain(std::chrono::seconds(5));
  if (handed > 0) logInfo("handed " + std::to_string(handed) + " slots over");
  p.cluster->announceLeave();  // tell the others, so they stop sending here
  lingerWhileChecksArrive(p.clock, [&p] { return p.rpc->stats().checks; });
  p.cluster->leave();
  if (p.rls) p.rls->shutdown();                   // finishes in-flight calls
  p.http->stop(std::chrono::milliseconds(2000));  // finishes in-flight requests
  p.rpc->stop();
  p.keeper->stop();     // decides what still waits for state (through the forwarder)
  p.forwarder->stop();  // after the APIs: their in-flight forwarded checks were answered
  p.sweeper->stop();
  p.exchange->stop();
  p.rules_sync->stop();
  if (p.flushes) p.flushes->join();
  if (p.writer) {
    p.writer->stop();  // one last flush
    const auto w = p.writer->stats();
    if (w.pending > 0) logWarn(std::to_string(w.pending) + " snapshot entries not written");
  }
}

}  // namespace throttlex

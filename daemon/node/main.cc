// throttlexd: wires the node together. The only place that reads flags, the environment and the
// system clock, and that handles signals.
#include <malloc.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <pthread.h>
#include <thread>
#include <unistd.h>

#include "daemon/node/cluster.h"
#include "daemon/node/config.h"
#include "daemon/routing/forwarder.h"
#include "daemon/slots/handoff_client.h"
#include "daemon/http/http_api.h"
#include "daemon/http/http_server.h"
#include "daemon/service/limiter_service.h"
#include "daemon/base/log.h"
#include "daemon/metrics/metrics.h"
#include "daemon/routing/ring_view.h"
#include "daemon/routing/router.h"
#include "daemon/rpc/rpc_server.h"
#include "daemon/slots/slot_keeper.h"
#include "daemon/service/sweeper.h"
#include "persistence/redis_store.h"
#include "persistence/snapshot_writer.h"

using namespace throttlex;

namespace {

int fail(const std::string& message) {
  logError(message);
  return 1;
}

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
    std::lock_guard guard(mu_);
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
    }), finished});
  }
  void join() {
    std::vector<Running> threads;
    {
      std::lock_guard guard(mu_);
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
  std::mutex mu_;
  std::vector<Running> threads_;  // guarded by mu_
};

// After announcing its leave a node stays while checks still arrive over RPC: peers that have not
// heard of the leave yet keep forwarding here, and those checks are passed on to the slots' new
// owners. It goes once none came for kLingerQuiet, after kLingerMax at the latest.
constexpr auto kLingerQuiet = std::chrono::seconds(1);
constexpr auto kLingerMax = std::chrono::seconds(10);

void lingerWhileChecksArrive(const std::function<std::uint64_t()>& checks) {
  using Steady = std::chrono::steady_clock;
  const auto deadline = Steady::now() + kLingerMax;
  std::uint64_t seen = checks();
  auto quiet_since = Steady::now();
  while (Steady::now() < deadline && Steady::now() - quiet_since < kLingerQuiet) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const std::uint64_t now_seen = checks();
    if (now_seen != seen) {
      seen = now_seen;
      quiet_since = Steady::now();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // RPC batches allocate and free message buffers of ~100 KiB many times a second on every
  // thread; glibc's default trim hands such memory back to the kernel on each free (madvise,
  // page faults, TLB shootdowns). Keep up to 64 MiB per arena instead.
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  auto loaded = loadConfig(argc, argv, [](const char* name) { return std::getenv(name); });
  if (const int* code = std::get_if<int>(&loaded)) return *code;
  const Config config = std::get<Config>(std::move(loaded));

  // Signals are taken synchronously by this thread (sigwait below); block them before any other
  // thread starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto rules = config.rules.empty() ? RuleSet::make({}) : RuleSet::loadFile(config.rules);
  if (!rules) return fail("--rules: " + rules.error().message);
  auto store = Store::make({config.max_keys, 1024});
  if (!store) return fail("--max-keys: " + store.error().message);

  SystemClock clock;
  // Snapshots (docs/persistence.md): only with --redis. Checks never wait for Redis: the store
  // tells the writer what changed, the writer's thread writes it behind.
  std::unique_ptr<persistence::RedisStore> redis;
  std::unique_ptr<persistence::SnapshotWriter> writer;
  std::unique_ptr<SnapshotObserver> observer;
  std::unique_ptr<Flushes> flushes;
  if (!config.redis.empty()) {
    persistence::RedisStoreOptions redis_options;
    const auto colon = config.redis.rfind(':');
    redis_options.host = config.redis.substr(0, colon);
    redis_options.port = std::stoi(config.redis.substr(colon + 1));
    redis_options.cluster = config.cluster_name;
    redis_options.on_event = [](const std::string& e) { logInfo("redis " + e); };
    auto made = persistence::RedisStore::make(redis_options, clock);
    if (!made) return fail("--redis: " + made.error().message);
    redis = std::move(*made);
    persistence::SnapshotWriterOptions writer_options;
    writer_options.interval = std::chrono::milliseconds(config.snapshot_interval_ms);
    auto w = persistence::SnapshotWriter::make(*redis, writer_options);
    if (!w) return fail("snapshots: " + w.error().message);
    writer = std::move(*w);
    observer = std::make_unique<SnapshotObserver>(*writer);
    flushes = std::make_unique<Flushes>(*writer);
    (*store)->setObserver(observer.get());
    writer->start();
  }
  SlotKeeperOptions keeper_options;
  keeper_options.self_id = config.node_id;
  keeper_options.snapshots = redis.get();
  keeper_options.send = &sendHandoff;
  keeper_options.recovery_timeout = std::chrono::milliseconds(config.recovery_timeout_ms);
  keeper_options.lazy = config.recovery == "lazy";
  // With seeds, wait for the cluster before deciding (a restarted member must not decide its old
  // keys alone while the others do); seeds that never answer leave it alone after 5 s.
  if (!config.join.empty()) keeper_options.join_timeout = std::chrono::seconds(5);
  SlotKeeper keeper(keeper_options, **store, clock);

  LimiterService service(**store, clock, std::move(*rules), config.rules);
  // The ring (published by the cluster thread once membership is up) and the forwarder that sends
  // checks of keys owned elsewhere to their owners. Until the first ring, everything is local.
  RingHolder ring;
  ForwarderOptions forwarder_options;
  forwarder_options.owner_silence = std::chrono::milliseconds(config.owner_silence_ms);
  auto forwarder = Forwarder::start(forwarder_options, service, ring);
  if (!forwarder) return fail("forwarder: " + forwarder.error().message);
  (*forwarder)->setKeeper(&keeper);
  Router router(service, &ring, forwarder->get(), &keeper);
  keeper.setRouter(&router);
  keeper.recoverAll();  // with --redis / --join: every slot waits for its snapshot / the cluster
  // Declared before everything that reads it (metrics scrapes, HTTP threads), so it outlives them.
  std::unique_ptr<ClusterNode> cluster;
  std::atomic<ClusterNode*> cluster_view{nullptr};  // set once membership is up
  // The cluster as other threads see it: null until membership is up.
  const auto clusterNode = [&cluster_view] { return cluster_view.load(std::memory_order_acquire); };
  Metrics metrics({config.node_id, kVersion, store->get(),
                   [clusterNode] {
                     ClusterNode* c = clusterNode();
                     return c != nullptr ? c->stats() : ClusterStats{};
                   },
                   [&forwarder] { return (*forwarder)->stats(); },
                   [&] {
                     PersistenceStats p;
                     p.has_store = redis != nullptr;
                     if (redis) p.store = redis->stats();
                     if (writer) p.writer = writer->stats();
                     p.slots = keeper.stats();
                     return p;
                   }});

  const auto started = std::chrono::steady_clock::now();
  // The ports actually bound (they differ from the flags when a flag says 0); set as each
  // listener comes up, read by the RPC and HTTP threads.
  std::atomic<int> http_port{config.http_port}, rpc_port{config.rpc_port},
      metrics_port{config.metrics_port};
  auto address = [&](const std::atomic<int>& port) {
    return config.advertise + ":" + std::to_string(port.load(std::memory_order_relaxed));
  };
  const NodeInfoProvider info = [&] {
    NodeInfo i;
    i.node_id = config.node_id;
    i.http_address = address(http_port);
    i.rpc_address = address(rpc_port);
    i.metrics_address = address(metrics_port);
    i.uptime_ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started).count());
    const StoreStats st = (*store)->stats();
    i.keys = st.entries;
    i.evictions = st.evictions;
    i.rules = static_cast<std::uint32_t>(service.rules().size());
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
    const SlotKeeperStats k = keeper.stats();
    p.slots_waiting = static_cast<std::uint32_t>(k.slots_waiting);
    p.parked = k.parked_now;
    p.handoffs_sent = k.handoffs_sent;
    p.handoffs_received = k.handoffs_received;
    p.handoff_entries_sent = k.handoff_entries_sent;
    p.handoff_entries_received = k.handoff_entries_received;
    p.handoff_failures = k.handoff_failures;
    p.recovery_timeouts = k.recovery_timeouts;
    p.draining = k.draining;
    p.drained = k.drained;
    return i;
  };
  NodeControl control;
  control.handoff = [&keeper](const std::string& from, std::span<const std::uint16_t> slots,
                              std::span<const std::uint8_t> entries) {
    return keeper.receive(from, slots, entries);
  };
  if (flushes) {
    control.snapshot = [&flushes](std::function<void(Result<SnapshotOutcome>)> done) {
      flushes->start(std::move(done));
    };
  }
  control.drain = []() -> Status {
    logInfo("drain requested over RPC");
    ::kill(::getpid(), SIGTERM);  // the same path as a SIGTERM from outside
    return Ok{};
  };

  auto metrics_bound = metrics.serve(config.bind, config.metrics_port);
  if (!metrics_bound) return fail("--metrics-port: " + metrics_bound.error().message);
  metrics_port = *metrics_bound;

  RpcServerOptions rpc_options;
  rpc_options.bind_address = config.bind;
  rpc_options.port = config.rpc_port;
  rpc_options.threads = config.threads;
  rpc_options.control = &control;
  auto rpc = RpcServer::start(rpc_options, router, info, &metrics);
  if (!rpc) return fail("--rpc-port: " + rpc.error().message);
  rpc_port = (*rpc)->port();

  // Membership comes up after the APIs, so it can announce their bound addresses.
  ClusterOptions cluster_options;
  cluster_options.cluster_name = config.cluster_name;
  cluster_options.node_id = config.node_id;
  cluster_options.bind_address = config.bind;
  cluster_options.advertise_host = config.advertise;
  cluster_options.port = config.gossip_port;
  cluster_options.seeds = config.join;
  cluster_options.timing = config.gossip_preset == "local" ? gossip::Timing::local()
                           : config.gossip_preset == "wan" ? gossip::Timing::wan()
                                                            : gossip::Timing::lan();
  cluster_options.meta.protocol_version = 1;
  cluster_options.ring = &ring;
  cluster_options.on_ring = [&keeper](std::shared_ptr<const RingView> view) {
    keeper.onRing(std::move(view));
  };
  const MembersProvider members = [clusterNode] {
    ClusterNode* c = clusterNode();
    return c != nullptr ? c->members() : std::vector<MemberInfo>{};
  };
  HttpApi api(service, &metrics, info, members, &router);
  HttpServerOptions http_options;
  http_options.bind_address = config.bind;
  http_options.port = config.http_port;
  http_options.threads = config.threads;
  auto http = HttpServer::start(http_options, [&api](HttpRequest& req, HttpRespond respond) {
    api.handle(req, respond);
  });
  if (!http) return fail("--http-port: " + http.error().message);
  http_port = (*http)->port();

  cluster_options.meta.rpc_address = address(rpc_port);
  cluster_options.meta.http_address = address(http_port);
  auto joined = ClusterNode::start(cluster_options, clock);
  if (!joined) return fail("--gossip-port: " + joined.error().message);
  cluster = std::move(*joined);
  cluster_view.store(cluster.get(), std::memory_order_release);

  Sweeper sweeper(**store, clock);
  if (redis && !keeper.waitStarted(std::max(keeper_options.startup_timeout,
                                             keeper_options.recovery_timeout) +
                                    std::chrono::seconds(1))) {
    logWarn("recovery from Redis still running; serving what has arrived");
  }
  api.setReady(true);
  logInfo("throttlexd " + std::string(kVersion) + " node " + config.node_id + " ready: http " +
          config.bind + ":" + std::to_string((*http)->port()) + ", rpc " + config.bind + ":" +
          std::to_string((*rpc)->port()) + ", metrics " + config.bind + ":" +
          std::to_string(metrics_port.load()) + ", gossip " + config.bind + ":" +
          std::to_string(cluster->port()) + ", " + std::to_string(config.threads) + " threads, " +
          std::to_string(service.rules().size()) + " rules");

  for (;;) {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGHUP) {
      auto r = service.reloadRules();
      if (r) {
        logInfo("rules reloaded: " + std::to_string(*r) + " rules");
      } else {
        logError("rules reload failed, keeping the old rules: " + r.error().message);
      }
      continue;
    }
    logInfo(std::string("shutting down on ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
    break;
  }
  api.setReady(false);
  // Drain: the slots' state goes to the nodes that take them over, before the others learn that
  // this node leaves (checks that still arrive here are passed on to them).
  const std::size_t handed = keeper.drain(std::chrono::seconds(5));
  if (handed > 0) logInfo("handed " + std::to_string(handed) + " slots over");
  cluster->announceLeave();  // tell the others, so they stop sending here
  lingerWhileChecksArrive([&rpc] { return (*rpc)->stats().checks; });
  cluster->leave();
  (*http)->stop(std::chrono::milliseconds(2000));  // finishes in-flight requests
  (*rpc)->stop();
  keeper.stop();  // decides what still waits for state (through the forwarder)
  (*forwarder)->stop();  // after the APIs: their in-flight forwarded checks were answered
  sweeper.stop();
  if (flushes) flushes->join();
  if (writer) {
    writer->stop();  // one last flush
    const auto w = writer->stats();
    if (w.pending > 0) logWarn(std::to_string(w.pending) + " snapshot entries not written");
  }
  logInfo("stopped");
  return 0;
}

// throttlexd: wires the node together. The only place that reads flags, the environment and the
// system clock, and that handles signals.
#include <malloc.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <pthread.h>
#include <thread>

#include "daemon/cluster.h"
#include "daemon/config.h"
#include "daemon/forwarder.h"
#include "daemon/http_api.h"
#include "daemon/http_server.h"
#include "daemon/limiter_service.h"
#include "daemon/log.h"
#include "daemon/metrics.h"
#include "daemon/ring_view.h"
#include "daemon/router.h"
#include "daemon/rpc_server.h"
#include "daemon/sweeper.h"

using namespace throttlex;

namespace {

int fail(const std::string& message) {
  logError(message);
  return 1;
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

  if (!config.redis.empty()) {
    logWarn("--redis given, but snapshots are not built yet: state is kept in memory only");
  }

  auto rules = config.rules.empty() ? RuleSet::make({}) : RuleSet::loadFile(config.rules);
  if (!rules) return fail("--rules: " + rules.error().message);
  auto store = Store::make({config.max_keys, 1024});
  if (!store) return fail("--max-keys: " + store.error().message);

  SystemClock clock;
  LimiterService service(**store, clock, std::move(*rules), config.rules);
  // The ring (published by the cluster thread once membership is up) and the forwarder that sends
  // checks of keys owned elsewhere to their owners. Until the first ring, everything is local.
  RingHolder ring;
  ForwarderOptions forwarder_options;
  forwarder_options.call_timeout = std::chrono::milliseconds(config.forward_timeout_ms);
  auto forwarder = Forwarder::start(forwarder_options, service, ring);
  if (!forwarder) return fail("forwarder: " + forwarder.error().message);
  Router router(service, &ring, forwarder->get());
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
                   [&forwarder] { return (*forwarder)->stats(); }});

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
    return i;
  };

  auto metrics_bound = metrics.serve(config.bind, config.metrics_port);
  if (!metrics_bound) return fail("--metrics-port: " + metrics_bound.error().message);
  metrics_port = *metrics_bound;

  RpcServerOptions rpc_options;
  rpc_options.bind_address = config.bind;
  rpc_options.port = config.rpc_port;
  rpc_options.threads = config.threads;
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
  cluster->leave();  // tell the others first, so they stop sending here
  (*http)->stop(std::chrono::milliseconds(2000));  // finishes in-flight requests
  (*rpc)->stop();
  (*forwarder)->stop();  // after the APIs: their in-flight forwarded checks were answered
  sweeper.stop();
  logInfo("stopped");
  return 0;
}

// The Cap'n Proto RPC front of a node: serves proto/throttlex.capnp's Node (Limiter + Admin) over
// LimiterService, for the client library, throttlectl and peers (forwarded batches, handoffs).
//
// Threads: `threads` KJ event loops, one thread each, each accepting on its own SO_REUSEPORT
// listen socket bound to the same port (the kernel spreads connections over them); a connection
// lives on one thread for its whole life. Hosted (the daemon's way): no threads of its own; each
// listen socket is served on a host thread's KJ loop (host(), called by each HTTP worker thread),
// so one thread serves HTTP, RPC and its forwarding, and a node's checks never change thread.
// Checks this node owns are answered synchronously on the serving thread (LimiterService::check
// never blocks); checks owned by other nodes are answered when the forwarder brings their owners'
// answers (daemon/routing/router.h). Admin calls run there too (reloadRules reads the rules file:
// a short block of that one thread, acceptable for an admin call).
//
// Bad input never crashes the node: expected failures (bad key, unknown rule, unsupported protocol
// version, oversize batch) travel as proto Error values; a message that Cap'n Proto itself cannot
// read (over the traversal or nesting limit, malformed) fails that call or connection with an RPC
// exception.
#pragma once

#include <capnp/message.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "daemon/adaptive/controller.h"
#include "daemon/base/node_control.h"
#include "daemon/base/node_info.h"
#include "daemon/rules_sync/rules_sync.h"
#include "limiter/result.h"
#include "proto/rpc_tls.h"

namespace throttlex {

class KjOnAsio;
class LimiterService;
class LoopService;
class Metrics;
class Router;

struct RpcServerOptions {
  std::string bind_address = "0.0.0.0";  // an IPv4/IPv6 address or a host name
  std::uint16_t port = 7400;             // 0: pick a free port (see RpcServer::port())
  int threads = 1;                       // >= 1 event loop threads
  // Per received message (Cap'n Proto ReaderOptions). The largest legal message, a batch of 1000
  // checks with 1 KiB keys and 128-byte rule names, is about 160 Ki words (1.25 MiB); 512 Ki words
  // (4 MiB) leaves room for that and bounds what one message can make the node read.
  std::uint64_t traversal_limit_words = 512 * 1024;
  int nesting_limit = 16;  // our messages nest 4 deep
  // The two bounds above as Cap'n Proto takes them (the fuzz targets read with them too).
  capnp::ReaderOptions readerOptions() const {
    capnp::ReaderOptions r;
    r.traversalLimitInWords = traversal_limit_words;
    r.nestingLimit = nesting_limit;
    return r;
  }
  std::size_t max_connections = 10'000;  // over all threads; more are accepted and closed at once
  // Per connection: call messages in flight (not yet answered); past it the connection is not
  // read until answers go out (Cap'n Proto's flow limit). 8 MiB: a few of the largest batches,
  // thousands of ordinary calls; bounds what one connection can make the node hold.
  std::size_t flow_limit_words = 1024 * 1024;
  // A connection that sends nothing for this long is closed (0: never). Peers heartbeat every
  // 50 ms while idle and the client library reopens a closed connection on its next call, so
  // only the abandoned ones go: a client that opens connections and never uses them cannot hold
  // them (and file descriptors) for good.
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(10)};
  // handoff, snapshot, drain (daemon/base/node_control.h); null or empty members: refused as
  // unavailable. Must outlive the server.
  const NodeControl* control = nullptr;
  // Adaptive rules: the controller peers send their digests to (adaptiveExchange). Null: the
  // call is refused as unavailable. Must outlive the server.
  AdaptiveController* adaptive = nullptr;
  // Rules across the cluster: what answers the members' syncRules calls. Null: refused as
  // unavailable. Must outlive the server.
  RulesSync* rules_sync = nullptr;
  // TLS (proto/rpc_tls.h): every connection must present a certificate of the cluster's CA, whose
  // common name gives its role. Null: plain TCP, every connection may do everything.
  std::shared_ptr<const proto::TlsConfig> tls;
  // With `tls`: false accepts plain connections too (a TLS ClientHello is told apart by its first
  // byte), served as without TLS; for turning TLS on in a running cluster.
  bool tls_required = true;
  // No threads of its own: `threads` listen sockets, each served through host().
  bool hosted = false;
};

struct RpcServerStats {
  std::uint64_t calls = 0;        // RPC calls answered (check, checkBatch and admin)
  std::uint64_t checks = 0;       // checks decided or refused, batch elements counted one by one
  std::uint64_t connections = 0;  // open now
  std::uint64_t rejected_connections = 0;  // closed at once because of max_connections
  std::uint64_t tls_refused = 0;     // TLS handshakes that failed, or certificates granting no role
  std::uint64_t plain_accepted = 0;  // plain connections taken while TLS is optional
  std::uint64_t idle_closed = 0;     // closed by idle_timeout
};

class RpcServer {
 public:
  // Binds and listens (errors: bad address, address in use), then starts the threads. `info` is
  // called on the RPC threads (from several at once when threads > 1) and must be thread-safe; it
  // may be empty. `metrics` may be null. `service` and `metrics` must outlive the server.
  static Result<std::unique_ptr<RpcServer>> start(const RpcServerOptions& options,
                                                  LimiterService& service, NodeInfoProvider info,
                                                  Metrics* metrics);
  // The same, with checks routed to their owners through `router` (which must outlive it).
  static Result<std::unique_ptr<RpcServer>> start(const RpcServerOptions& options, Router& router,
                                                  NodeInfoProvider info, Metrics* metrics);
  ~RpcServer();  // stop()s
  RpcServer(const RpcServer&) = delete;
  RpcServer& operator=(const RpcServer&) = delete;

  std::uint16_t port() const;  // the bound port
  // Hosted: serves the next listen socket no thread serves yet on the calling thread's KJ loop,
  // until the returned service is stopped and destroyed (on that thread); null when every socket
  // is served, or when not hosted. Thread-safe.
  std::unique_ptr<LoopService> host(KjOnAsio& kj);
  // Stops accepting, closes every connection (clients see DISCONNECTED and fail over) and joins
  // the threads. A call still waiting for a forwarded answer is dropped with its connection (its
  // client retries elsewhere); the forwarder's late answer goes nowhere. Hosted: only marks the
  // server stopped; the host threads close its connections when they stop (stop them first).
  // Idempotent; thread-safe.
  void stop();

  RpcServerStats stats() const;  // thread-safe
  // Every thread accepts connections (false after stop(), or once an accept loop failed for
  // good). Thread-safe.
  bool listening() const;

  struct Impl;

 private:
  explicit RpcServer(std::unique_ptr<Impl> impl);
  static Result<std::unique_ptr<RpcServer>> start(const RpcServerOptions& options, Router& router,
                                                  NodeInfoProvider info, Metrics* metrics,
                                                  std::unique_ptr<Router> own_router);
  std::unique_ptr<Impl> impl_;
};

}  // namespace throttlex

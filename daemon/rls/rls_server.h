// Envoy's rate limit service (envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit) on its
// own gRPC port (--rls-port; docs/envoy.md). A request's descriptors are matched against its
// domain's descriptor tree (daemon/service/descriptors.h); each that has a limit becomes one check
// on the rule the tree made for it, and the checks go through the Router like every other batch:
// decided here, or forwarded to their owners. Answers as envoyproxy/ratelimit does: overall_code,
// one status per descriptor with current_limit, limit_remaining and duration_until_reset, and the
// draft-10 RateLimit headers in response_headers_to_add when enabled.
//
// Threads: gRPC's own (the callback API). A check that must be forwarded is handed from gRPC's
// thread to the forwarder's fallback thread (counted in throttlex_thread_handoffs_total), and the
// call completes from there.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "daemon/routing/router.h"
#include "limiter/result.h"
#include "proto/rpc_tls.h"

namespace throttlex {

class Metrics;

struct RlsServerOptions {
  std::string bind = "0.0.0.0";
  std::uint16_t port = 0;         // 0: an ephemeral port (tests)
  bool response_headers = false;  // add RateLimit-Policy and RateLimit to every answer
  // The node's --tls-* files: when set, the port speaks TLS only and every caller must present a
  // certificate of the cluster's CA whose common name grants a role (client:, peer:, admin:);
  // read once at start (a SIGHUP reload does not reach this port: restart to renew).
  proto::TlsFiles tls;
};

inline constexpr std::size_t kMaxRlsMessageBytes = 64 * 1024;  // larger: RESOURCE_EXHAUSTED

class RlsServer {
 public:
  // Listening when it returns. `router` must outlive the server.
  // `metrics` may be null.
  static Result<std::unique_ptr<RlsServer>> start(const RlsServerOptions& options, Router& router,
                                                  Metrics* metrics);
  ~RlsServer();
  RlsServer(const RlsServer&) = delete;
  RlsServer& operator=(const RlsServer&) = delete;

  std::uint16_t port() const;
  // Stops taking calls and waits for those in flight (their forwarded checks are answered by the
  // forwarder, on shutdown too). Idempotent.
  void shutdown();

 private:
  struct Impl;
  explicit RlsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace throttlex

// The HTTP API's routes (docs/api.md): checks (GET with a query, POST JSON for one or a batch),
// the nginx auth_request endpoint, health and readiness. Maps LimiterService outcomes to status
// codes, the IETF RateLimit-Policy / RateLimit headers (draft-ietf-httpapi-ratelimit-headers-10),
// Retry-After, and problem+json errors.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "daemon/base/node_info.h"
#include "daemon/http/http_server.h"
#include "daemon/loop/kj_on_asio.h"
#include "daemon/metrics/metrics.h"
#include "daemon/routing/router.h"
#include "daemon/service/limiter_service.h"

namespace throttlex {

class HttpApi {
 public:
  // `members` may be empty (no cluster): /v1/cluster then lists this node alone. `router` may be
  // null: every check is decided here.
  HttpApi(LimiterService& service, Metrics* metrics, NodeInfoProvider info,
          MembersProvider members = {}, Router* router = nullptr);

  // The HttpServer handler. Never blocks: answers on the calling thread, or, for checks owned by
  // another node, when the owner answered (on the forwarder thread).
  void handle(HttpRequest& request, const HttpRespond& respond);

  // /readyz answers 200 only between setReady(true) and setReady(false) (set during shutdown, so
  // load balancers stop sending before the node stops answering).
  void setReady(bool ready) { ready_.store(ready, std::memory_order_relaxed); }
  // Asked on every /readyz: empty when every listener works, else why not ("rpc listener
  // stopped"), and /readyz answers 503 with it. Set before serving; called on HTTP threads.
  void setListenerCheck(std::function<std::string()> check) { listener_check_ = std::move(check); }

 private:
  void checkGet(const HttpRequest& request, bool auth_request, const HttpRespond& respond);
  void checkPost(const HttpRequest& request, const HttpRespond& respond);
  void checkAtomic(const nlohmann::json& checks, std::string_view priority, Instant start,
                   const HttpRespond& respond);
  void checkOne(const CheckArgs& args, bool auth_request, Instant start,
                const HttpRespond& respond);
  HttpResponse answer(const Result<CheckOutcome>& outcome, bool auth_request);
  HttpResponse readiness() const;        // /readyz
  HttpResponse infoResponse() const;     // /v1/info
  HttpResponse clusterResponse() const;  // /v1/cluster
  void record(const Result<CheckOutcome>& outcome, Instant start);
  HttpResponse reportPost(const HttpRequest& request);  // POST /v1/report
  // POST /v1/release and /v1/renew (`op`: "release" or "renew").
  void leasePost(const HttpRequest& request, std::string_view op, const HttpRespond& respond);

  LimiterService& service_;
  const std::unique_ptr<Router> own_router_;  // when none was given
  Router& router_;
  Metrics* const metrics_;  // may be null
  const NodeInfoProvider info_;
  const MembersProvider members_;
  std::atomic<bool> ready_{false};
  std::function<std::string()> listener_check_;
};

// Exposed for tests.
// Decodes application/x-www-form-urlencoded text ("%41+b" -> "A b"); nullopt if malformed.
std::optional<std::string> urlDecode(std::string_view text);
// POST /v1/report's body: one report ({"rule", "latency_ms", "outcome"}) or {"reports": [...]}.
// Every element is checked (types, ranges, unknown fields); the first bad one fails the whole
// body, named by its index.
struct ParsedReport {
  std::string rule;
  std::optional<Duration> latency;
  ReportOutcome outcome = ReportOutcome::kOk;
};
Result<std::vector<ParsedReport>> parseReportBody(std::string_view body);
// RateLimit / RateLimit-Policy header values for one outcome.
std::string rateLimitPolicyHeader(const CheckOutcome& o);
std::string rateLimitHeader(const CheckOutcome& o);

// HTTP worker threads that forward their own checks: each gets a KJ event loop on its io_context
// (daemon/loop/kj_on_asio.h) and a forwarder loop of its own (Router::attachThread()), so a
// forwarded check is sent, answered and completed on the thread that received it. `router` and
// `clock` must outlive the server. `also` (optional) is made on each such thread too: the node's
// RPC server, hosted there (RpcServer::host()). Each thread also probes its loop's lag for
// overload protection (daemon/service/overload.h), unless `overload.target` is 0, and reports
// its standing lag and shed share to `metrics` (optional; it must outlive the server).
HttpThreadScopeFactory forwardingThreads(Router& router, const Clock& clock,
                                         LoopServiceFactory also = {},
                                         OverloadOptions overload = {}, Metrics* metrics = nullptr);

}  // namespace throttlex

// The HTTP API's routes (docs/api.md): checks (GET with a query, POST JSON for one or a batch),
// the nginx auth_request endpoint, health and readiness. Maps LimiterService outcomes to status
// codes, the IETF RateLimit-Policy / RateLimit headers (draft-ietf-httpapi-ratelimit-headers-10),
// Retry-After, and problem+json errors.
#pragma once

#include <atomic>

#include "daemon/http_server.h"
#include "daemon/limiter_service.h"
#include "daemon/metrics.h"
#include "daemon/node_info.h"

namespace throttlex {

class HttpApi {
 public:
  // `members` may be empty (no cluster): /v1/cluster then lists this node alone.
  HttpApi(LimiterService& service, Metrics* metrics, NodeInfoProvider info,
          MembersProvider members = {});

  // The HttpServer handler. Answers synchronously on the calling thread; never blocks.
  void handle(HttpRequest& request, const HttpRespond& respond);

  // /readyz answers 200 only between setReady(true) and setReady(false) (set during shutdown, so
  // load balancers stop sending before the node stops answering).
  void setReady(bool ready) { ready_.store(ready, std::memory_order_relaxed); }

 private:
  HttpResponse checkGet(const HttpRequest& request, bool auth_request);
  HttpResponse checkPost(const HttpRequest& request);
  HttpResponse answer(const Result<CheckOutcome>& outcome, bool auth_request);
  void record(const Result<CheckOutcome>& outcome, std::chrono::steady_clock::time_point start);

  LimiterService& service_;
  Metrics* const metrics_;  // may be null
  const NodeInfoProvider info_;
  const MembersProvider members_;
  std::atomic<bool> ready_{false};
};

// Exposed for tests.
// Decodes application/x-www-form-urlencoded text ("%41+b" -> "A b"); nullopt if malformed.
std::optional<std::string> urlDecode(std::string_view text);
// RateLimit / RateLimit-Policy header values for one outcome.
std::string rateLimitPolicyHeader(const CheckOutcome& o);
std::string rateLimitHeader(const CheckOutcome& o);

}  // namespace throttlex

// Fuzz target: the HTTP API behind the parser (daemon/http/http_api.h): the request target and
// its query, the X-RateLimit-* headers and the JSON body of a batch, decoded and answered by a
// real limiter service. Input: a method selector byte, then "target\n", header lines
// "name: value\n" up to an empty line, then the body. Every answer must be a complete response:
// a status from 200 to 599 and, for errors, a problem+json body.
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "daemon/http/http_api.h"
#include "daemon/service/limiter_service.h"
#include "limiter/clock.h"
#include "limiter/store.h"

using namespace throttlex;

namespace {

struct Fixture {
  ManualClock clock;
  std::unique_ptr<Store> store = Store::make({4096, 4}).value();
  LimiterService service{*store, clock,
                         RuleSet::parseYaml("rules:\n  - {name: api, limit: 5, period: 1m}\n"
                                            "  - {name: gcra, limit: 9, period: 1s, algorithm: "
                                            "gcra, burst: 3}\n"
                                            "  - {name: db, limit: 3, lease_ttl: 10s, algorithm: "
                                            "concurrency}\n")
                             .value(),
                         ""};
  HttpApi api{service, nullptr, [] { return NodeInfo{}; }};
  Fixture() { api.setReady(true); }
};

std::string_view takeLine(std::string_view& in) {
  const std::size_t nl = in.find('\n');
  const std::string_view line = in.substr(0, nl);
  in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
  return line;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Fixture* a = new Fixture();
  if (size == 0) return 0;
  static constexpr const char* kMethods[] = {"GET", "POST", "HEAD", "PUT", "DELETE"};
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  HttpRequest req;
  req.method = kMethods[data[0] % 5];
  req.target = std::string(takeLine(in));
  const std::size_t q = req.target.find('?');
  req.path = req.target.substr(0, q);
  req.query = q == std::string::npos ? "" : req.target.substr(q + 1);
  while (!in.empty()) {
    const std::string_view line = takeLine(in);
    if (line.empty()) break;
    const std::size_t colon = line.find(':');
    std::string name(line.substr(0, colon));
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::string_view value = colon == std::string_view::npos ? "" : line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    req.headers.emplace_back(std::move(name), std::string(value));
  }
  req.body = std::string(in);
  bool answered = false;
  a->api.handle(req, [&](HttpResponse r) {
    if (answered || r.status < 200 || r.status > 599) __builtin_trap();
    // A denial is a decision (the check's JSON): 429, or 403 for nginx on /v1/auth. Every other
    // 4xx/5xx is a problem+json error.
    const bool denial = r.status == 429 || (r.status == 403 && req.path == "/v1/auth");
    if (r.status >= 400 && !denial && r.content_type != "application/problem+json") {
      std::fprintf(stderr, "status %d with content type %s\n", r.status, r.content_type.c_str());
      __builtin_trap();
    }
    answered = true;
  });
  if (!answered) __builtin_trap();  // no router: every answer comes at once
  a->clock.advance(std::chrono::milliseconds(data[0]));
  return 0;
}

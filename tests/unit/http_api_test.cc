// The HTTP routes in-process: request parsing and validation, status codes, bodies and headers,
// without sockets (the server itself is covered by http_server_test).
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "daemon/http/http_api.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

struct Fixture {
  ManualClock clock{Time(std::chrono::seconds(1'700'000'000))};
  std::unique_ptr<Store> store = Store::make({100'000, 64}).value();
  LimiterService service{
      *store, clock, RuleSet::parseYaml("rules:\n  - {name: api, limit: 2, period: 1m}\n").value(),
      ""};
  HttpApi api{service, nullptr, nullptr};

  HttpResponse call(const std::string& method, const std::string& target,
                    const std::string& body = "",
                    std::vector<std::pair<std::string, std::string>> headers = {}) {
    HttpRequest req;
    req.method = method;
    req.target = target;
    const auto q = target.find('?');
    req.path = target.substr(0, q);
    req.query = q == std::string::npos ? "" : target.substr(q + 1);
    req.body = body;
    req.headers = std::move(headers);
    HttpResponse out;
    bool answered = false;
    api.handle(req, [&](HttpResponse r) {
      out = std::move(r);
      answered = true;
    });
    REQUIRE(answered);
    return out;
  }
};

std::string header(const HttpResponse& r, const std::string& name) {
  for (const auto& [k, v] : r.headers) {
    if (k == name) return v;
  }
  return "";
}

}  // namespace

TEST_CASE("urlDecode handles plus, percent escapes and rejects malformed escapes") {
  CHECK(*urlDecode("a+b%20c%2Fd") == "a b c/d");
  CHECK(*urlDecode("user%3A42") == "user:42");
  CHECK(*urlDecode("") == "");
  CHECK_FALSE(urlDecode("%").has_value());
  CHECK_FALSE(urlDecode("%4").has_value());
  CHECK_FALSE(urlDecode("%zz").has_value());
}

TEST_CASE("an allowed check answers 200 with the JSON body and RateLimit headers") {
  Fixture f;
  const HttpResponse r = f.call("GET", "/v1/check?key=user%3A1&limit=10&period=1m&hits=4");
  CHECK(r.status == 200);
  const auto body = nlohmann::json::parse(r.body);
  CHECK(body["allowed"] == true);
  CHECK(body["limit"] == 10);
  CHECK(body["remaining"] == 6);
  CHECK(body["reset_after_ms"] == 24000);
  CHECK(body["retry_after_ms"] == 0);
  CHECK(body["policy"] == "default");
  CHECK(body["shadow"] == false);
  CHECK(header(r, "RateLimit-Policy") == "\"default\";q=10;w=60");
  CHECK(header(r, "RateLimit") == "\"default\";r=6;t=24");
  CHECK(header(r, "Retry-After").empty());
}

TEST_CASE("a limited check answers 429 with Retry-After at least the RateLimit t") {
  Fixture f;
  CHECK(f.call("GET", "/v1/check?key=k&rule=api").status == 200);
  CHECK(f.call("GET", "/v1/check?key=k&rule=api").status == 200);
  const HttpResponse r = f.call("GET", "/v1/check?key=k&rule=api");
  CHECK(r.status == 429);
  CHECK(header(r, "Retry-After") == "30");
  CHECK(header(r, "RateLimit") == "\"api\";r=0;t=30");
  CHECK(nlohmann::json::parse(r.body)["retry_after_ms"] == 30000);
}

TEST_CASE("a cost that can never fit answers 429 without Retry-After") {
  Fixture f;
  const HttpResponse r = f.call("GET", "/v1/check?key=k&limit=5&period=1s&hits=6");
  CHECK(r.status == 429);
  CHECK(header(r, "Retry-After").empty());
  CHECK(nlohmann::json::parse(r.body)["retry_after_ms"] == -1);
}

TEST_CASE("sub-second periods leave w out of RateLimit-Policy") {
  Fixture f;
  const HttpResponse r = f.call("GET", "/v1/check?key=k&limit=5&period=250ms");
  CHECK(header(r, "RateLimit-Policy") == "\"default\";q=5");
}

TEST_CASE("parameter validation names the parameter") {
  Fixture f;
  struct Case {
    const char* target;
    int status;
    const char* needle;
  };
  const Case cases[] = {
      {"/v1/check?limit=1&period=1s", 400, "'key' is required"},
      {"/v1/check?key=a&limit=1", 400, "needs 'limit' and 'period'"},
      {"/v1/check?key=a&limit=x&period=1s", 400, "'limit' must be"},
      {"/v1/check?key=a&limit=1&period=1s&hits=--2", 400, "'hits' must be"},
      {"/v1/check?key=a&limit=1&period=1s&hits=-", 400, "'hits' must be"},
      {"/v1/check?key=a&limit=1&period=1s&burst=1.5", 400, "'burst' must be"},
      {"/v1/check?key=a&limit=1&period=1s&algorithm=nope", 400, "unknown algorithm"},
      {"/v1/check?key=a&rule=api&period=1s", 400, "not both"},
      {"/v1/check?key=a&rule=zzz", 404, "unknown rule 'zzz'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.target);
    const HttpResponse r = f.call("GET", c.target);
    CHECK(r.status == c.status);
    CHECK(r.content_type == "application/problem+json");
    CHECK(nlohmann::json::parse(r.body)["detail"].get<std::string>().find(c.needle) !=
          std::string::npos);
  }
}

TEST_CASE("POST takes one check or a batch with per-element results") {
  Fixture f;
  HttpResponse r = f.call("POST", "/v1/check", R"({"key":"a","limit":1,"period":"1m"})");
  CHECK(r.status == 200);
  r = f.call("POST", "/v1/check", R"({"key":"a","limit":1,"period":60000})");
  CHECK(r.status == 429);
  r = f.call(
      "POST", "/v1/check",
      R"({"checks":[{"key":"b","rule":"api"},{"key":"b","rule":"api","hits":"x"},{"key":"b","limit":true}]})");
  CHECK(r.status == 200);
  const auto results = nlohmann::json::parse(r.body)["results"];
  REQUIRE(results.size() == 3);
  CHECK(results[0]["allowed"] == true);
  CHECK(results[1]["error"]["status"] == 400);
  CHECK(results[2]["error"]["status"] == 400);
  CHECK(f.call("POST", "/v1/check", "{").status == 400);
  CHECK(f.call("POST", "/v1/check", R"({"checks":{}})").status == 400);
}

TEST_CASE("negative hits give units back, over GET and POST, and never beyond the limit") {
  Fixture f;
  auto remaining = [](const HttpResponse& r) {
    return nlohmann::json::parse(r.body)["remaining"].get<std::uint64_t>();
  };
  CHECK(f.call("GET", "/v1/check?key=u&limit=10&period=1m&hits=10").status == 200);
  CHECK(f.call("GET", "/v1/check?key=u&limit=10&period=1m").status == 429);
  HttpResponse r = f.call("GET", "/v1/check?key=u&limit=10&period=1m&hits=-4");
  CHECK(r.status == 200);
  CHECK(remaining(r) == 4);
  r = f.call("POST", "/v1/check", R"({"key":"u","limit":10,"period":"1m","hits":-100})");
  CHECK(r.status == 200);
  CHECK(remaining(r) == 10);
  r = f.call(
      "POST", "/v1/check",
      R"({"checks":[{"key":"v","rule":"api","hits":2},{"key":"v","rule":"api","hits":"-1"}]})");
  const auto results = nlohmann::json::parse(r.body)["results"];
  CHECK(results[1]["remaining"] == 1);
  CHECK(f.call("POST", "/v1/check", R"({"key":"u","limit":-1,"period":"1m"})").status == 400);
}

TEST_CASE("an atomic batch answers one verdict, names the denier and gives the rest back") {
  Fixture f;
  const std::string batch =
      R"({"atomic":true,"checks":[{"key":"g","limit":3,"period":"1h"},{"key":"u","rule":"api"}]})";
  CHECK(f.call("POST", "/v1/check", batch).status == 200);
  CHECK(f.call("POST", "/v1/check", batch).status == 200);
  const HttpResponse r = f.call("POST", "/v1/check", batch);  // api allows 2: the third is denied
  CHECK(r.status == 429);
  const auto body = nlohmann::json::parse(r.body);
  CHECK(body["allowed"] == false);
  CHECK(body["denied_by"] == 1);
  CHECK(body["results"][0]["refunded"] == true);
  CHECK(body["results"][0]["remaining"] == 1);  // g's unit came back
  CHECK(f.call("POST", "/v1/check", R"({"atomic":"yes","checks":[]})").status == 400);
  const HttpResponse bad =
      f.call("POST", "/v1/check",
             R"({"atomic":true,"checks":[{"key":"g","limit":3,"period":"1h"},{"key":""}]})");
  CHECK(bad.status == 400);
  CHECK(nlohmann::json::parse(bad.body)["detail"].get<std::string>().find("check 1") !=
        std::string::npos);
  CHECK(nlohmann::json::parse(
            f.call("GET", "/v1/check?key=g&limit=3&period=1h&hits=0").body)["remaining"] == 1);
}

TEST_CASE("the auth_request endpoint answers 204 or 403 and reads the key from a header") {
  Fixture f;
  const std::vector<std::pair<std::string, std::string>> h = {{"x-ratelimit-key", "10.1.2.3"}};
  CHECK(f.call("GET", "/v1/auth?rule=api", "", h).status == 204);
  CHECK(f.call("GET", "/v1/auth?rule=api", "", h).status == 204);
  const HttpResponse r = f.call("GET", "/v1/auth?rule=api", "", h);
  CHECK(r.status == 403);
  CHECK(r.body.empty());
  CHECK(header(r, "Retry-After") == "30");
  CHECK(f.call("GET", "/v1/auth?rule=api&key=other", "", h).status == 204);
}

TEST_CASE("health, readiness, unknown routes and methods") {
  Fixture f;
  CHECK(f.call("GET", "/healthz").status == 200);
  CHECK(f.call("GET", "/readyz").status == 503);
  f.api.setReady(true);
  CHECK(f.call("GET", "/readyz").status == 200);
  // A listener that stopped accepting makes the node unready, and says which.
  std::string broken;
  f.api.setListenerCheck([&broken] { return broken; });
  CHECK(f.call("GET", "/readyz").status == 200);
  broken = "rpc listener stopped";
  const HttpResponse unready = f.call("GET", "/readyz");
  CHECK(unready.status == 503);
  CHECK(unready.body == R"({"reason":"rpc listener stopped","status":"not ready"})");
  CHECK(f.call("GET", "/nope").status == 404);
  const HttpResponse r = f.call("PUT", "/v1/check");
  CHECK(r.status == 405);
  CHECK(header(r, "Allow") == "GET, POST");
}

namespace {

struct AdaptiveFixture : Fixture {
  AdaptiveFixture() {
    REQUIRE(service
                .setRule(RuleSet::parseYaml("rules:\n  - {name: backend, limit: 600, period: 1s, "
                                            "adaptive: {max: 2000, latency_target: 100ms}}\n")
                             .value()
                             .rules()[0])
                .ok());
  }
  AdaptiveCell& cell() { return *service.currentRules()->find("backend")->cell; }
};

}  // namespace

TEST_CASE("POST /v1/report takes one report or a batch: 202 with how many were taken") {
  AdaptiveFixture f;
  auto r = f.call("POST", "/v1/report", R"({"rule":"backend","latency_ms":250,"outcome":"ok"})");
  CHECK(r.status == 202);
  CHECK(nlohmann::json::parse(r.body)["taken"] == 1);
  r = f.call(
      "POST", "/v1/report",
      R"({"reports":[{"rule":"backend","latency_ms":12.5},{"rule":"backend","outcome":"timeout"}]})");
  CHECK(r.status == 202);
  CHECK(nlohmann::json::parse(r.body)["taken"] == 2);
  const SignalDigest d = f.cell().take();
  CHECK(d.reports() == 3);
  CHECK(d.latencies() == 2);
  CHECK(d.outcome(ReportOutcome::kTimeout) == 1);
  CHECK(*d.quantile(1.0) >= 250ms);
}

TEST_CASE("POST /v1/report refuses bad input with problem+json, taking nothing") {
  AdaptiveFixture f;
  const auto problem = [&](const std::string& body, int status, const std::string& detail) {
    CAPTURE(body);
    const HttpResponse r = f.call("POST", "/v1/report", body);
    CHECK(r.status == status);
    CHECK(r.content_type == "application/problem+json");
    const auto j = nlohmann::json::parse(r.body);
    CHECK(j["status"] == status);
    CHECK(j["detail"].get<std::string>().find(detail) != std::string::npos);
  };
  problem(R"({"rule":"nope","latency_ms":1})", 404, "unknown rule 'nope'");
  problem(R"({"rule":"api","latency_ms":1})", 400, "not adaptive");
  problem(R"({"rule":"backend","latency_ms":-1})", 400, "latency_ms");
  problem(R"({"rule":"backend","latency_ms":1e300})", 400, "latency_ms");
  problem(R"({"rule":"backend","latency_ms":"fast"})", 400, "must be a number");
  problem(R"({"rule":"backend","latency_ms":NaN})", 400, "not valid JSON");
  problem(R"({"rule":"backend","outcome":"meh"})", 400, "outcome must be");
  problem(R"({"rule":"backend","outcome":1})", 400, "'outcome' must be a string");
  problem(R"({"latency_ms":1})", 400, "'rule' is required");
  problem(R"({"rule":"backend","latncy_ms":1})", 400, "unknown field 'latncy_ms'");
  problem(R"([1,2])", 400, "JSON object");
  problem(R"({"reports":{}})", 400, "must be an array");
  problem(R"({"reports":[],"rule":"backend"})", 400, "no other fields");
  problem(R"({"reports":[{"rule":"backend","latency_ms":1},{"rule":"backend","latency_ms":-3}]})",
          400, "report #1");
  std::string big = R"({"reports":[)";
  for (int i = 0; i < 1001; ++i) big += std::string(i ? "," : "") + R"({"rule":"backend"})";
  problem(big + "]}", 413, "at most 1000");
  CHECK(f.cell().take().reports() == 0);  // none of the above was taken
  CHECK(f.call("GET", "/v1/report").status == 405);
}

TEST_CASE(
    "a check of an adaptive rule shows the effective limit in its body and RateLimit-Policy") {
  AdaptiveFixture f;
  AdaptiveVerdict v;
  v.limit = 150;
  v.reason = "test";
  f.cell().apply(v, f.clock.now());
  const HttpResponse r = f.call("GET", "/v1/check?rule=backend&key=k");
  CHECK(r.status == 200);
  CHECK(nlohmann::json::parse(r.body)["limit"] == 150);
  CHECK(header(r, "RateLimit-Policy") == "\"backend\";q=150;w=1");
}

TEST_CASE("an error that quotes part of a field, cut inside a character, still answers JSON") {
  Fixture f;
  // Error messages quote at most 40 bytes of a bad value: here that cuts the two-byte "é".
  const std::string priority = std::string(39, 'a') + "\u00e9";
  const HttpResponse r =
      f.call("POST", "/v1/check",
             R"({"checks":[{"rule":"api","key":"k","priority":")" + priority +
                 R"("},{"rule":"api","key":"k","release":")" + std::string(39, 'b') +
                 R"(\u00e9"},{"rule":"api","key":"k"}]})");
  REQUIRE(r.status == 200);
  const auto body = nlohmann::json::parse(r.body);
  CHECK(body["results"][0]["error"]["status"] == 400);
  CHECK(body["results"][1]["error"]["status"] == 400);
  CHECK(body["results"][2]["allowed"] == true);
}

TEST_CASE("POST /v1/renew extends a held lease; malformed renewals are 400 problems") {
  Fixture f;
  REQUIRE(f.service
              .setRule(RuleSet::parseYaml("rules:\n  - {name: jobs, algorithm: concurrency, limit: "
                                          "1, lease_ttl: 30s}\n")
                           .value()
                           .rules()[0])
              .ok());
  const auto acquired = nlohmann::json::parse(f.call("GET", "/v1/check?rule=jobs&key=k").body);
  const std::string lease = acquired["lease"]["id"];
  const std::int64_t first_expiry = acquired["lease"]["expires_at_ms"];
  f.clock.advance(20s);
  const HttpResponse r =
      f.call("POST", "/v1/renew", R"({"rule":"jobs","key":"k","lease":")" + lease + R"("})");
  REQUIRE(r.status == 200);
  const auto body = nlohmann::json::parse(r.body);
  CHECK(body["renew"] == "renewed");
  CHECK(body["lease"]["id"] == lease);
  CHECK(body["lease"]["expires_at_ms"].get<std::int64_t>() > first_expiry);
  CHECK(body["remaining"] == 0);
  // Past the first expiry the slot is still held.
  f.clock.advance(std::chrono::milliseconds(first_expiry) - f.clock.now().time_since_epoch());
  CHECK(f.call("GET", "/v1/check?rule=jobs&key=k").status == 429);

  for (const auto& [bad, detail] :
       {std::pair{R"({"rule":"jobs","key":"k","lease":")" + lease + R"(","hits":2})",
                  "a renew takes 'rule', 'key' and 'lease' only"},
        std::pair{std::string(R"({"rule":"jobs","key":"k","lease":"xyz"})"), "no lease id"},
        std::pair{R"({"rule":"api","key":"k","lease":")" + lease + R"("})",
                  "leases to release or renew"}}) {
    const HttpResponse e = f.call("POST", "/v1/renew", bad);
    CHECK(e.status == 400);
    CHECK(e.content_type == "application/problem+json");
    CHECK(nlohmann::json::parse(e.body)["detail"].get<std::string>().find(detail) !=
          std::string::npos);
  }
  // In an atomic batch that is denied, a renewal keeps its effect (it spent nothing to give back).
  f.call("GET", "/v1/check?rule=api&key=u");
  f.call("GET", "/v1/check?rule=api&key=u");  // api allows 2 a minute: u is spent
  const HttpResponse denied =
      f.call("POST", "/v1/check",
             R"({"atomic":true,"checks":[{"key":"k","rule":"jobs","renew":")" + lease +
                 R"("},{"key":"u","rule":"api"}]})");
  CHECK(denied.status == 429);
  const auto renewal = nlohmann::json::parse(denied.body)["results"][0];
  CHECK(renewal["renew"] == "renewed");
  CHECK(renewal["allowed"] == true);
  CHECK(renewal["lease"]["id"] == lease);  // its new expiry stands
  CHECK_FALSE(renewal.contains("refunded"));
  CHECK(nlohmann::json::parse(
            f.call("POST", "/v1/renew", R"({"rule":"jobs","key":"k","lease":")" + lease + R"("})")
                .body)["renew"] == "renewed");  // still held, not released by the denial

  const HttpResponse both =
      f.call("GET", "/v1/check?rule=jobs&key=k&release=" + lease + "&renew=" + lease);
  CHECK(both.status == 400);
  CHECK(f.call("GET", "/v1/renew").status == 405);
}

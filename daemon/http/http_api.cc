#include "daemon/http/http_api.h"

#include <asio/steady_timer.hpp>
#include <charconv>

#include <nlohmann/json.hpp>

#include "daemon/loop/kj_on_asio.h"
#include "daemon/service/rules_doc.h"
#include "limiter/period.h"

namespace throttlex {
namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// JSON text of `j`; bytes that are not UTF-8 (a caller's key or field echoed in an error) become
// U+FFFD instead of throwing.
std::string dumpJson(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int httpStatus(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return 400;
    case ErrorCode::kNotFound:
      return 404;
    case ErrorCode::kResourceExhausted:
      return 429;
    case ErrorCode::kUnavailable:
      return 503;
    case ErrorCode::kDeadlineExceeded:
    case ErrorCode::kNotDecided:
      return 504;
    case ErrorCode::kPermissionDenied:
      return 403;
    case ErrorCode::kInternal:
      return 500;
  }
  return 500;
}

std::int64_t ceilSeconds(Duration d) {
  if (d <= Duration(0)) return 0;
  return (d.count() + 999'999'999) / 1'000'000'000;
}
std::int64_t toMs(Duration d) {
  if (d < Duration(0)) return -1;  // kRetryNever
  return (d.count() + 999'999) / 1'000'000;
}

Result<std::uint64_t> parseNumber(std::string_view name, std::string_view text) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return invalidArgument("'" + std::string(name) + "' must be a non-negative integer, got '" +
                           std::string(text) + "'");
  }
  return v;
}

// The fields of one check, as text, from a query string, headers or JSON.
struct CheckFields {
  std::string key, rule, algorithm, limit, period, burst, hits, release, renew, priority;
};

Result<std::uint64_t> parseLease(std::string_view text) {
  if (auto id = parseLeaseId(text)) return *id;
  return invalidArgument("'" + std::string(text.substr(0, 40)) +
                         "' is no lease id: up to 16 hex digits, not all 0, as an acquire "
                         "answers in 'lease.id'");
}
// The caller's deadline from its X-Throttlex-Deadline-Ms header (ms it waits from sending), if any.
Result<std::optional<Instant>> deadlineOf(const HttpRequest& request, Instant start) {
  const std::string* h = request.header("x-throttlex-deadline-ms");
  if (h == nullptr) return std::optional<Instant>();
  auto ms = parseNumber("X-Throttlex-Deadline-Ms", *h);
  if (!ms || *ms > 3'600'000) {
    return invalidArgument("X-Throttlex-Deadline-Ms must be a whole number of ms up to 3600000");
  }
  if (*ms == 0) return std::optional<Instant>();
  return std::optional<Instant>(start + std::chrono::milliseconds(*ms));
}

Result<CheckArgs> toArgs(const CheckFields& f);

// toArgs() with the caller's deadline from the request's header.
Result<CheckArgs> toArgs(const CheckFields& f, const HttpRequest& request, Instant start) {
  auto args = toArgs(f);
  if (!args) return args;
  auto deadline = deadlineOf(request, start);
  if (!deadline) return deadline.error();
  args->deadline = *deadline;
  return args;
}

// Turns the text fields into CheckArgs; `args` views into `fields`.
Result<CheckArgs> toArgs(const CheckFields& f) {
  CheckArgs a;
  a.key = f.key;
  if (f.key.empty()) return invalidArgument("'key' is required");
  if (!f.hits.empty()) {
    // A negative count gives units back (a refund).
    a.refund = f.hits.front() == '-';
    auto h = parseNumber("hits", std::string_view(f.hits).substr(a.refund ? 1 : 0));
    if (!h) {
      return invalidArgument("'hits' must be an integer (negative gives units back), got '" +
                             f.hits + "'");
    }
    a.hits = *h;
  }
  if (!f.release.empty()) {
    auto id = parseLease(f.release);
    if (!id) return id.error();
    a.release = *id;
  }
  if (!f.renew.empty()) {
    auto id = parseLease(f.renew);
    if (!id) return id.error();
    a.renew = *id;
  }
  if (!f.priority.empty()) {
    auto p = parsePriority(f.priority);
    if (!p) return p.error();
    a.priority = *p;
  }
  if (!f.rule.empty()) {
    if (!f.limit.empty() || !f.period.empty() || !f.algorithm.empty() || !f.burst.empty()) {
      return invalidArgument(
          "give either 'rule' or an inline limit ('limit', 'period', ...), not both");
    }
    a.rule = f.rule;
    return a;
  }
  if (f.limit.empty() || f.period.empty()) {
    return invalidArgument("an inline limit needs 'limit' and 'period' (or give 'rule')");
  }
  auto limit = parseNumber("limit", f.limit);
  if (!limit) return limit.error();
  auto period = parsePeriod(f.period);
  if (!period) return period.error();
  a.limit.limit = *limit;
  a.limit.period = *period;
  if (!f.algorithm.empty()) {
    auto algo = parseAlgorithm(f.algorithm);
    if (!algo) return algo.error();
    a.limit.algorithm = *algo;
  }
  if (!f.burst.empty()) {
    auto burst = parseNumber("burst", f.burst);
    if (!burst) return burst.error();
    a.limit.burst = *burst;
  }
  return a;
}

Status fromQuery(std::string_view query, CheckFields& f) {
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) continue;
    const std::size_t eq = pair.find('=');
    const std::string_view name = pair.substr(0, eq);
    auto value = urlDecode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1));
    if (!value) return invalidArgument("malformed percent-encoding in '" + std::string(name) + "'");
    std::string* slot = name == "key"         ? &f.key
                        : name == "rule"      ? &f.rule
                        : name == "algorithm" ? &f.algorithm
                        : name == "limit"     ? &f.limit
                        : name == "period"    ? &f.period
                        : name == "burst"     ? &f.burst
                        : name == "hits"      ? &f.hits
                        : name == "release"   ? &f.release
                        : name == "renew"     ? &f.renew
                        : name == "priority"  ? &f.priority
                                              : nullptr;
    if (slot != nullptr) *slot = std::move(*value);  // unknown parameters are ignored
  }
  return Ok{};
}

// JSON members may be strings or numbers ("period": "1s" or 1000 for ms).
// `priority`: the request's X-Throttlex-Priority header, for checks that name none.
Status fromJson(const nlohmann::json& j, CheckFields& f, std::string_view priority = {}) {
  if (!j.is_object()) return invalidArgument("each check must be a JSON object");
  f.priority = priority;
  const std::pair<const char*, std::string*> fields[] = {
      {"key", &f.key},          {"rule", &f.rule},       {"algorithm", &f.algorithm},
      {"limit", &f.limit},      {"period", &f.period},   {"burst", &f.burst},
      {"hits", &f.hits},        {"release", &f.release}, {"renew", &f.renew},
      {"priority", &f.priority}};
  for (const auto& [name, slot] : fields) {
    const auto it = j.find(name);
    if (it == j.end() || it->is_null()) continue;
    if (it->is_string()) {
      *slot = it->get<std::string>();
    } else if (it->is_number_unsigned()) {
      *slot = std::to_string(it->get<std::uint64_t>());
    } else if (slot == &f.hits && it->is_number_integer()) {
      *slot = std::to_string(it->get<std::int64_t>());  // negative: a refund
    } else {
      return invalidArgument(std::string("'") + name +
                             "' must be a string or a non-negative integer");
    }
  }
  return Ok{};
}

void appendSfString(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += (c >= 0x20 && c <= 0x7e) ? c : '_';
  }
  out += '"';
}

nlohmann::json outcomeJson(const CheckOutcome& o) {
  nlohmann::json j = {{"allowed", o.allowed},
                      {"limit", o.decision.limit},
                      {"remaining", o.decision.remaining},
                      {"reset_after_ms", toMs(o.decision.reset_after)},
                      {"retry_after_ms", toMs(o.decision.retry_after)},
                      {"policy", o.policy},
                      {"shadow", o.shadow},
                      {"route", nameOf(o.route)}};
  if (o.lease_id != 0) {
    j["lease"] = {{"id", formatLeaseId(o.lease_id)}, {"expires_at_ms", o.lease_expiry_ms}};
  }
  if (o.released) j["release"] = leaseReleaseName(*o.released);
  if (o.renewed) j["renew"] = leaseRenewalName(*o.renewed);
  if (o.shed) j["shed"] = nameOf(*o.shed);
  return j;
}

// The hot path's response body, written directly: same fields and order as outcomeJson() (which
// serves batches), without building a JSON tree per request. Policy names are validated rule names
// or "default", so they need no escaping beyond the defensive one here.
std::string outcomeBody(const CheckOutcome& o) {
  std::string b;
  b.reserve(160);
  b += R"({"allowed":)";
  b += o.allowed ? "true" : "false";
  b += R"(,"limit":)";
  b += std::to_string(o.decision.limit);
  b += R"(,"policy":")";
  for (char c : o.policy) {
    if (c == '"' || c == '\\') b += '\\';
    b += (c >= 0x20 && c != 0x7f) ? c : '_';
  }
  b += R"(","remaining":)";
  b += std::to_string(o.decision.remaining);
  b += R"(,"reset_after_ms":)";
  b += std::to_string(toMs(o.decision.reset_after));
  b += R"(,"retry_after_ms":)";
  b += std::to_string(toMs(o.decision.retry_after));
  b += R"(,"shadow":)";
  b += o.shadow ? "true" : "false";
  b += R"(,"route":")";
  b += nameOf(o.route);
  b += '"';
  if (o.lease_id != 0) {
    b += R"(,"lease":{"id":")";
    b += formatLeaseId(o.lease_id);
    b += R"(","expires_at_ms":)";
    b += std::to_string(o.lease_expiry_ms);
    b += '}';
  }
  if (o.released) {
    b += R"(,"release":")";
    b += leaseReleaseName(*o.released);
    b += '"';
  }
  if (o.renewed) {
    b += R"(,"renew":")";
    b += leaseRenewalName(*o.renewed);
    b += '"';
  }
  if (o.shed) {
    b += R"(,"shed":")";
    b += nameOf(*o.shed);
    b += '"';
  }
  b += '}';
  return b;
}

nlohmann::json errorJson(const Error& e) {
  return {{"error", {{"status", httpStatus(e.code)}, {"detail", e.message}}}};
}

HttpResponse problemFor(const Error& e) {
  const int status = httpStatus(e.code);
  return problemResponse(status, status == 404 ? "Not Found" : "Bad Request", e.message);
}

Result<ParsedReport> reportFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return invalidArgument("a report must be a JSON object");
  ParsedReport r;
  for (const auto& [name, value] : j.items()) {
    if (name == "rule") {
      if (!value.is_string()) return invalidArgument("'rule' must be a string");
      r.rule = value.get<std::string>();
    } else if (name == "latency_ms") {
      if (value.is_null()) continue;
      // Numbers only; nlohmann parses no NaN or Infinity, so a finite double is all that is left.
      if (!value.is_number()) return invalidArgument("'latency_ms' must be a number");
      const double ms = value.get<double>();
      if (!(ms >= 0) || ms > 3'600'000) {
        return invalidArgument("'latency_ms' must lie within 0 and 3600000 (1 hour)");
      }
      r.latency = Duration(static_cast<std::int64_t>(ms * 1e6));
    } else if (name == "outcome") {
      if (!value.is_string()) return invalidArgument("'outcome' must be a string");
      auto o = parseReportOutcome(value.get<std::string>());
      if (!o) return o.error();
      r.outcome = *o;
    } else {
      return invalidArgument("unknown field '" + name + "' (rule, latency_ms, outcome)");
    }
  }
  if (r.rule.empty()) return invalidArgument("'rule' is required");
  return r;
}

}  // namespace

Result<std::vector<ParsedReport>> parseReportBody(std::string_view body) {
  const auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalidArgument("the body is not valid JSON");
  if (!j.is_object()) return invalidArgument("the body must be a JSON object");
  std::vector<ParsedReport> out;
  const auto list = j.find("reports");
  if (list == j.end()) {
    auto r = reportFromJson(j);
    if (!r) return r.error();
    out.push_back(std::move(*r));
    return out;
  }
  if (j.size() != 1) return invalidArgument("a body with 'reports' may have no other fields");
  if (!list->is_array()) return invalidArgument("'reports' must be an array");
  if (list->size() > kMaxBatchReports) {
    return Error{ErrorCode::kResourceExhausted,
                 "at most " + std::to_string(kMaxBatchReports) + " reports per call"};
  }
  out.reserve(list->size());
  for (std::size_t i = 0; i < list->size(); ++i) {
    auto r = reportFromJson((*list)[i]);
    if (!r) return invalidArgument("report #" + std::to_string(i) + ": " + r.error().message);
    out.push_back(std::move(*r));
  }
  return out;
}

HttpResponse HttpApi::reportPost(const HttpRequest& request) {
  auto parsed = parseReportBody(request.body);
  if (!parsed) {
    if (parsed.error().code == ErrorCode::kResourceExhausted) {
      return problemResponse(413, "Payload Too Large", parsed.error().message);
    }
    return problemFor(parsed.error());
  }
  std::vector<ReportArgs> args;
  args.reserve(parsed->size());
  for (const ParsedReport& p : *parsed) args.push_back({p.rule, p.latency, p.outcome});
  auto taken = service_.report(args);
  if (!taken) return problemFor(taken.error());
  HttpResponse r;
  r.status = 202;
  r.body = dumpJson(nlohmann::json{{"taken", *taken}});
  return r;
}

std::optional<std::string> urlDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%') {
      if (i + 2 >= text.size()) return std::nullopt;
      const int hi = hexValue(text[i + 1]), lo = hexValue(text[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::string rateLimitPolicyHeader(const CheckOutcome& o) {
  std::string v;
  appendSfString(v, o.policy);
  v += ";q=" + std::to_string(std::min<std::uint64_t>(o.decision.limit, 999'999'999'999'999));
  // w is whole seconds; sub-second and fractional periods are left out rather than misstated.
  if (o.period.count() % 1'000'000'000 == 0)
    v += ";w=" + std::to_string(o.period.count() / 1'000'000'000);
  return v;
}

std::string rateLimitHeader(const CheckOutcome& o) {
  std::string v;
  appendSfString(v, o.policy);
  v += ";r=" + std::to_string(std::min<std::uint64_t>(o.decision.remaining, 999'999'999'999'999));
  // t: when more quota is available to this client — the retry time when limited, else the reset.
  const Duration t = o.decision.allowed ? o.decision.reset_after : o.decision.retry_after;
  if (t >= Duration(0)) v += ";t=" + std::to_string(ceilSeconds(t));
  return v;
}

HttpApi::HttpApi(LimiterService& service, Metrics* metrics, NodeInfoProvider info,
                 MembersProvider members, Router* router)
    : service_(service),
      own_router_(router == nullptr ? std::make_unique<Router>(service, nullptr, nullptr)
                                    : nullptr),
      router_(router == nullptr ? *own_router_ : *router),
      metrics_(metrics),
      info_(std::move(info)),
      members_(std::move(members)) {}

namespace {

// The owners' answers for the checks of one HTTP request, filled on the forwarder thread; the
// last one builds and sends the response (HttpRespond may be called from any thread).

}  // namespace

void HttpApi::checkOne(const CheckArgs& args, bool auth_request, Instant start,
                       const HttpRespond& respond) {
  Forwarding forwarding;
  if (auto here = router_.check(args, 0, forwarding)) {
    record(*here, start);
    return respond(answer(*here, auth_request));
  }
  auto wait = std::make_shared<ResultCollector>(
      std::vector<Result<CheckOutcome>>(1, Error{ErrorCode::kInternal, "not decided"}), 1,
      [this, auth_request, start, respond](std::vector<Result<CheckOutcome>>& outcomes) {
        record(outcomes[0], start);
        respond(answer(outcomes[0], auth_request));
      });
  router_.forward(std::move(forwarding), std::move(wait));
}

void HttpApi::record(const Result<CheckOutcome>& outcome, Instant start) {
  if (metrics_ != nullptr) {
    metrics_->recordCheck(Api::kHttp, outcome, service_.clock().monotonic() - start);
  }
}

HttpResponse HttpApi::answer(const Result<CheckOutcome>& outcome, bool auth_request) {
  if (!outcome) {
    return problemFor(outcome.error());
  }
  const CheckOutcome& o = *outcome;
  HttpResponse r;
  r.headers.emplace_back("RateLimit-Policy", rateLimitPolicyHeader(o));
  r.headers.emplace_back("RateLimit", rateLimitHeader(o));
  if (o.shed) r.headers.emplace_back("X-Throttlex-Shed", std::string(nameOf(*o.shed)));
  if (!o.allowed && o.decision.retry_after >= Duration(0)) {
    r.headers.emplace_back("Retry-After", std::to_string(std::max<std::int64_t>(
                                              1, ceilSeconds(o.decision.retry_after))));
  }
  if (auth_request) {  // nginx auth_request: 2xx allows, 403 denies (nginx maps it to 429)
    r.status = o.allowed ? 204 : 403;
    return r;
  }
  r.status = o.allowed ? 200 : 429;
  r.body = outcomeBody(o);
  return r;
}

void HttpApi::checkGet(const HttpRequest& request, bool auth_request, const HttpRespond& respond) {
  const Instant start = service_.clock().monotonic();
  CheckFields f;
  if (auto st = fromQuery(request.query, f); !st) return respond(problemFor(st.error()));
  if (auth_request) {  // headers fill what the query does not give
    const std::pair<const char*, std::string*> from_headers[] = {
        {"x-ratelimit-key", &f.key}, {"x-ratelimit-rule", &f.rule}, {"x-ratelimit-hits", &f.hits}};
    for (const auto& [name, slot] : from_headers) {
      if (const std::string* h = request.header(name); h != nullptr && slot->empty()) *slot = *h;
    }
  }
  if (const std::string* p = request.header("x-throttlex-priority"); p && f.priority.empty()) {
    f.priority = *p;
  }
  auto args = toArgs(f, request, start);
  if (!args) {
    record(args.error(), start);
    return respond(answer(args.error(), auth_request));
  }
  checkOne(*args, auth_request, start, respond);
}

void HttpApi::checkPost(const HttpRequest& request, const HttpRespond& respond) {
  const Instant start = service_.clock().monotonic();
  const std::string* header_priority = request.header("x-throttlex-priority");
  const std::string_view priority =
      header_priority != nullptr ? std::string_view(*header_priority) : std::string_view();
  const auto body = nlohmann::json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return respond(problemResponse(400, "Bad Request", "the body is not valid JSON"));
  }
  if (!body.is_object()) {
    return respond(problemResponse(400, "Bad Request", "the body must be a JSON object"));
  }

  const auto checks = body.find("checks");
  if (checks == body.end()) {  // one check
    CheckFields f;
    if (auto st = fromJson(body, f, priority); !st) return respond(problemFor(st.error()));
    auto args = toArgs(f, request, start);
    if (!args) {
      record(args.error(), start);
      return respond(answer(args.error(), false));
    }
    return checkOne(*args, false, start, respond);
  }

  // A batch: always 200; each result says allowed or carries its own error.
  if (!checks->is_array()) {
    return respond(problemResponse(400, "Bad Request", "'checks' must be an array"));
  }
  if (checks->size() > kMaxBatchChecks) {
    return respond(problemResponse(413, "Payload Too Large", "at most 1000 checks per batch"));
  }
  const auto atomic = body.find("atomic");
  if (atomic != body.end() && !atomic->is_boolean()) {
    return respond(problemResponse(400, "Bad Request", "'atomic' must be true or false"));
  }
  if (atomic != body.end() && atomic->get<bool>())
    return checkAtomic(*checks, priority, start, respond);
  std::vector<CheckFields> fields(checks->size());
  std::vector<Result<CheckArgs>> parsed;
  parsed.reserve(checks->size());
  for (std::size_t i = 0; i < checks->size(); ++i) {
    auto st = fromJson((*checks)[i], fields[i], priority);
    parsed.push_back(st ? toArgs(fields[i]) : Result<CheckArgs>(st.error()));
  }
  const auto deadline = deadlineOf(request, start);
  if (!deadline) return respond(problemFor(deadline.error()));
  std::vector<CheckArgs> valid;
  for (const auto& p : parsed) {
    if (!p) continue;
    valid.push_back(*p);
    valid.back().deadline = *deadline;
  }
  // Which elements were valid; the rest answer with their parse errors.
  std::vector<std::optional<Error>> errors;
  errors.reserve(parsed.size());
  for (const auto& p : parsed) errors.push_back(p ? std::nullopt : std::optional<Error>(p.error()));
  auto finish = [this, start, respond,
                 errors = std::move(errors)](std::vector<Result<CheckOutcome>>& decided) {
    nlohmann::json results = nlohmann::json::array();
    std::size_t next = 0;
    for (const auto& e : errors) {
      const Result<CheckOutcome> o = e ? Result<CheckOutcome>(*e) : decided[next++];
      record(o, start);
      results.push_back(o ? outcomeJson(*o) : errorJson(o.error()));
    }
    HttpResponse r;
    r.body = dumpJson(nlohmann::json{{"results", std::move(results)}});
    respond(std::move(r));
  };
  router_.decideAll(valid, std::move(finish));
}

// {"rule": R, "key": K, "lease": ID} to /v1/release gives a concurrency rule's lease back, to
// /v1/renew extends it by a lease_ttl from now (docs/concurrency.md); `op` is "release" or
// "renew". Always 200 when the request is well-formed: the answer's `op` member says what was
// found, and a lease that is unknown, expired or released already changes nothing.
void HttpApi::leasePost(const HttpRequest& request, std::string_view op,
                        const HttpRespond& respond) {
  const Instant start = service_.clock().monotonic();
  const auto body = nlohmann::json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return respond(problemResponse(400, "Bad Request", "the body must be a JSON object"));
  }
  const auto lease = body.find("lease");
  if (lease == body.end() || !lease->is_string()) {
    return respond(problemResponse(
        400, "Bad Request", "'lease' is required: the lease id (a string) an acquire answered"));
  }
  if (body.contains("release") || body.contains("renew") || body.contains("hits")) {
    return respond(problemResponse(
        400, "Bad Request", "a " + std::string(op) + " takes 'rule', 'key' and 'lease' only"));
  }
  nlohmann::json check = body;
  check.erase("lease");
  check[std::string(op)] = *lease;
  CheckFields f;
  if (auto st = fromJson(check, f); !st) return respond(problemFor(st.error()));
  auto args = toArgs(f);
  if (!args) return respond(problemFor(args.error()));
  checkOne(*args, false, start, respond);
}

// {"atomic": true, "checks": [...]}: one verdict for the whole batch. A malformed check refuses the
// batch before anything is spent.
void HttpApi::checkAtomic(const nlohmann::json& checks, std::string_view priority, Instant start,
                          const HttpRespond& respond) {
  auto fields = std::make_shared<std::vector<CheckFields>>(checks.size());
  std::vector<CheckArgs> args;
  args.reserve(checks.size());
  for (std::size_t i = 0; i < checks.size(); ++i) {
    auto st = fromJson(checks[i], (*fields)[i], priority);
    auto a = st ? toArgs((*fields)[i]) : Result<CheckArgs>(st.error());
    if (!a) {
      Error e = a.error();
      e.message = "check " + std::to_string(i) + ": " + e.message + " (nothing was spent)";
      return respond(problemFor(e));
    }
    args.push_back(*a);
  }
  router_.checkAtomic(std::move(args), fields, [this, start, respond](AtomicOutcome& r) {
    nlohmann::json results = nlohmann::json::array();
    for (std::size_t i = 0; i < r.outcomes.size(); ++i) {
      record(r.outcomes[i], start);
      nlohmann::json j =
          r.outcomes[i] ? outcomeJson(*r.outcomes[i]) : errorJson(r.outcomes[i].error());
      if (r.refunded[i]) j["refunded"] = true;
      results.push_back(std::move(j));
    }
    HttpResponse out;
    nlohmann::json body{{"allowed", !r.denied_by.has_value()}};
    if (r.denied_by) {
      body["denied_by"] = *r.denied_by;
      const auto& denier = r.outcomes[*r.denied_by];
      out.status = denier ? 429 : httpStatus(denier.error().code);  // a check that failed
      if (denier && denier->decision.retry_after > Duration(0)) {
        out.headers.emplace_back("Retry-After", std::to_string(std::max<std::int64_t>(
                                                    1, ceilSeconds(denier->decision.retry_after))));
      }
    }
    body["results"] = std::move(results);
    out.body = dumpJson(body);
    respond(std::move(out));
  });
}

HttpResponse HttpApi::readiness() const {
  HttpResponse r;
  const std::string broken = listener_check_ ? listener_check_() : std::string();
  const bool ready = ready_.load(std::memory_order_relaxed) && broken.empty();
  r.status = ready ? 200 : 503;
  r.body = ready            ? R"({"status":"ready"})"
           : broken.empty() ? R"({"status":"not ready"})"
                            : dumpJson(nlohmann::json{{"status", "not ready"}, {"reason", broken}});
  return r;
}

HttpResponse HttpApi::infoResponse() const {
  const NodeInfo i = info_ ? info_() : NodeInfo{};
  HttpResponse r;
  r.body = dumpJson(
      nlohmann::json{{"node_id", i.node_id},
                     {"version", i.version},
                     {"http_address", i.http_address},
                     {"rpc_address", i.rpc_address},
                     {"metrics_address", i.metrics_address},
                     {"uptime_ms", i.uptime_ms},
                     {"keys", i.keys},
                     {"evictions", i.evictions},
                     {"rules", i.rules},
                     {"rules_version", formatRulesVersion({i.rules_counter, i.rules_digest})},
                     {"rules_origin", i.rules_origin},
                     {"rules_made_ms", i.rules_made_ms}});
  return r;
}

HttpResponse HttpApi::clusterResponse() const {
  const NodeInfo self = info_ ? info_() : NodeInfo{};
  nlohmann::json list = nlohmann::json::array();
  std::size_t alive = 0;
  std::vector<MemberInfo> members;
  if (members_) members = members_();
  if (members.empty()) {  // not clustered: this node alone
    MemberInfo solo;
    solo.node_id = self.node_id;
    solo.rpc_address = self.rpc_address;
    solo.http_address = self.http_address;
    solo.state = "alive";
    members.push_back(std::move(solo));
  }
  for (const MemberInfo& m : members) {
    alive += m.state == "alive" ? 1u : 0u;
    list.push_back({{"node_id", m.node_id},
                    {"state", m.state},
                    {"gossip_address", m.gossip_address},
                    {"rpc_address", m.rpc_address},
                    {"http_address", m.http_address},
                    {"incarnation", m.incarnation}});
  }
  HttpResponse r;
  r.body = dumpJson(
      nlohmann::json{{"node_id", self.node_id}, {"alive", alive}, {"members", std::move(list)}});
  return r;
}

void HttpApi::handle(HttpRequest& request, const HttpRespond& respond) {
  const std::string& path = request.path;
  const bool get = request.method == "GET" || request.method == "HEAD";
  auto methodNotAllowed = [&](const char* allow) {
    HttpResponse r =
        problemResponse(405, "Method Not Allowed", request.method + " is not allowed on " + path);
    r.headers.emplace_back("Allow", allow);
    return r;
  };

  if (path == "/v1/check") {
    if (get) return checkGet(request, false, respond);
    if (request.method == "POST") return checkPost(request, respond);
    return respond(methodNotAllowed("GET, POST"));
  }
  if (path == "/v1/auth") return checkGet(request, true, respond);  // nginx sends GET; allow any
  if (path == "/v1/release" || path == "/v1/renew") {
    if (request.method != "POST") return respond(methodNotAllowed("POST"));
    return leasePost(request, std::string_view(path).substr(4), respond);
  }
  if (path == "/v1/report") {
    if (request.method != "POST") return respond(methodNotAllowed("POST"));
    return respond(reportPost(request));
  }
  if (path == "/healthz") {
    if (!get) return respond(methodNotAllowed("GET"));
    HttpResponse r;
    r.body = R"({"status":"ok"})";
    return respond(std::move(r));
  }
  if (path == "/readyz") {
    if (!get) return respond(methodNotAllowed("GET"));
    return respond(readiness());
  }
  if (path == "/v1/info") {
    if (!get) return respond(methodNotAllowed("GET"));
    return respond(infoResponse());
  }
  if (path == "/v1/cluster") {
    if (!get) return respond(methodNotAllowed("GET"));
    return respond(clusterResponse());
  }
  respond(problemResponse(404, "Not Found", "no route for " + path));
}

namespace {

class ForwardingThread final : public HttpThreadScope {
 public:
  ForwardingThread(asio::io_context& io, Router& router, const Clock& clock,
                   const LoopServiceFactory& also, const OverloadOptions& overload,
                   Metrics* metrics)
      : kj_(io, clock), clock_(clock), overload_(overload), metrics_(metrics), probe_(io) {
    forwarder_ = router.attachThread(
        kj_.timer(), [this](const std::string& address) { return kj_.connect(address); });
    if (also) also_ = also(kj_);
    if (overload.target > Duration(0)) {
      OverloadDetector::setCurrent(&overload_);
      due_ = clock_.monotonic();
      probe();
    }
  }
  ~ForwardingThread() override {
    stop();
    if (OverloadDetector::current() == &overload_) OverloadDetector::setCurrent(nullptr);
  }
  ForwardingThread(const ForwardingThread&) = delete;
  ForwardingThread& operator=(const ForwardingThread&) = delete;

  // The hosted service stops accepting; queued checks are answered (degraded), calls in flight
  // come back cancelled and answer theirs; then the loop, the hosted service's connections and
  // the forwarder's go, so the io_context runs dry.
  void stop() override {
    if (std::exchange(stopped_, true)) return;
    probe_.cancel();
    if (also_) also_->stop();
    if (forwarder_) forwarder_->shutdown();
    kj_.settle();
    forwarder_.reset();
    kj_.settle();
    also_.reset();
    kj_.settle(true);
  }

 private:
  // The loop-lag probe: due every probePeriod(); how late it runs is the loop's lag.
  void probe() {
    const Duration period = overload_.probePeriod();
    due_ += period;
    probe_.expires_after(period);
    probe_.async_wait([this, period](const std::error_code& ec) {
      if (ec || stopped_) return;
      const Instant now = clock_.monotonic();
      const Duration lag = std::max(Duration(0), now - due_);
      due_ = now;
      overload_.sample(now, lag, now + period);
      if (metrics_ != nullptr) metrics_->recordLoop(overload_.standingLag(), overload_.share());
      probe();
    });
  }

  bool stopped_ = false;
  KjOnAsio kj_;
  const Clock& clock_;
  OverloadDetector overload_;
  Metrics* const metrics_;
  asio::steady_timer probe_;
  Instant due_{};
  std::unique_ptr<ForwarderThread> forwarder_;
  std::unique_ptr<LoopService> also_;
};

}  // namespace

HttpThreadScopeFactory forwardingThreads(Router& router, const Clock& clock,
                                         LoopServiceFactory also, OverloadOptions overload,
                                         Metrics* metrics) {
  return [&router, &clock, also = std::move(also), overload,
          metrics](asio::io_context& io) -> std::unique_ptr<HttpThreadScope> {
    return std::make_unique<ForwardingThread>(io, router, clock, also, overload, metrics);
  };
}

}  // namespace throttlex

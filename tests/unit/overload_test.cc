// Overload protection (daemon/service/overload.h): the CoDel-style detector on recorded loop-lag
// sequences in virtual time, what a shed check answers over HTTP, and a batch shed whole over RPC.
#include <doctest/doctest.h>

#include <algorithm>
#include <deque>

#include <kj/async.h>
#include <nlohmann/json.hpp>

#include "daemon/http/http_api.h"
#include "daemon/metrics/metrics.h"
#include "daemon/routing/router.h"
#include "daemon/rpc/rpc_service.h"
#include "daemon/service/overload.h"
#include "proto/throttlex.capnp.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

const Instant kT0 = Instant(std::chrono::seconds(1000));

// Feeds `lag` samples every 5 ms from `from` for `span`; returns when the last was taken.
Instant feed(OverloadDetector& d, Instant from, Duration span, Duration lag) {
  Instant now = from;
  for (; now < from + span; now += 5ms) d.sample(now, lag, now + 5ms);
  return now - 5ms;
}

}  // namespace

TEST_CASE("a burst sheds only sheddable checks; a standing queue sheds normal ones too") {
  OverloadDetector d({10ms, 100ms});
  CHECK(d.probePeriod() == 5ms);
  Instant now = feed(d, kT0, 50ms, 1ms);  // on time
  for (auto p : {Priority::kSheddable, Priority::kNormal, Priority::kCritical}) {
    CHECK_FALSE(d.shed(p, now));
  }
  // A burst: 30 ms of lag for 40 ms, above the target for 60 ms in all, not an interval yet.
  now = feed(d, now + 5ms, 40ms, 30ms);
  CHECK(d.shed(Priority::kSheddable, now) == ShedReason::kOverload);
  CHECK_FALSE(d.shed(Priority::kNormal, now));
  CHECK_FALSE(d.standingAt(now));
  // It lasts: a standing queue. Normal checks that waited more than 10 targets go too.
  now = feed(d, now + 5ms, 100ms, 150ms);
  CHECK(d.standingAt(now));
  CHECK(d.shed(Priority::kNormal, now) == ShedReason::kOverload);
  CHECK_FALSE(d.shed(Priority::kCritical, now));
  // A standing queue of shorter waits (above the target, below 10 targets) sheds normal checks only
  // in the messages that drew the share; the others are decided.
  OverloadDetector mild({10ms, 100ms});
  const Instant t = feed(mild, kT0, 300ms, 60ms);
  CHECK(mild.standingAt(t));
  CHECK(mild.shed(Priority::kSheddable, t) == ShedReason::kOverload);
  CHECK_FALSE(mild.shed(Priority::kNormal, t));
  CHECK(mild.shed(Priority::kNormal, t, true) == ShedReason::kOverload);
  CHECK_FALSE(mild.shed(Priority::kCritical, t, true));
  // One sample at or below the target ends the standing queue; sheddable checks keep going for an
  // interval (what queued behind the lag is still being read), then they are served again.
  d.sample(now + 5ms, 2ms, now + 10ms);
  CHECK_FALSE(d.standingAt(now + 5ms));
  CHECK_FALSE(d.shed(Priority::kNormal, now + 5ms));
  CHECK(d.shed(Priority::kSheddable, now + 5ms) == ShedReason::kOverload);
  now = feed(d, now + 10ms, 150ms, 2ms);
  CHECK_FALSE(d.shed(Priority::kSheddable, now));
}

TEST_CASE("a standing queue sheds a share of normal messages, steered by the lag") {
  OverloadDetector d({10ms, 100ms});
  // A burst (above the target for less than an interval) starts no share.
  Instant now = feed(d, kT0, 40ms, 30ms);
  CHECK(d.share() == 0);
  CHECK_FALSE(d.draw());
  // A standing queue: the share grows while the lag stays above the target...
  now = feed(d, now + 5ms, 150ms, 20ms);
  const double grown = d.share();
  CHECK(grown > 0);
  now = feed(d, now + 5ms, 20ms, 20ms);
  CHECK(d.share() > grown);
  // ...holds while the lag is at the target...
  now = feed(d, now + 5ms, 50ms, 10ms);
  const double held = d.share();
  CHECK(held > 0);
  CHECK(held < 1);
  // ...and the draws shed that share of the messages, spaced evenly (never two in a row below 1/2).
  int shed = 0;
  bool last = false;
  for (int i = 0; i < 1000; ++i) {
    const bool now_shed = d.draw();
    shed += now_shed ? 1 : 0;
    if (held < 0.5) CHECK_FALSE((now_shed && last));
    last = now_shed;
  }
  CHECK(shed >= static_cast<int>(1000 * held) - 1);
  CHECK(shed <= static_cast<int>(1000 * held) + 1);
  // Below the target it shrinks back to 0, and a burst after that starts none.
  now = feed(d, now + 5ms, 200ms, 1ms);
  CHECK(d.share() == 0);
  CHECK_FALSE(d.draw());
  feed(d, now + 5ms, 40ms, 30ms);
  CHECK(d.share() == 0);
}

namespace {

// A worker loop in virtual time: messages arrive one every `every` and wait in order; the loop
// takes them one by one, asks the detector (a draw, then shed() for a normal check) and spends
// `decide` of CPU on a decided one, 27% of that on a shed one (bench/rpc_batch_bench's ratio).
// The probe is a timer: due every probePeriod(), it runs when the loop reaches it, behind what was
// ready before. The loop gets `on` of every `period` of CPU (a CFS quota; on == period: all).
struct LoopRun {
  double shed = 0;  // share of the messages of the last 2 s that were shed
  Duration median_wait{0};
  Duration p99_wait{0};  // of the decided ones: from arrival until the loop took them
};

LoopRun runLoop(Duration every, Duration decide, Duration on, Duration period) {
  constexpr auto kTick = std::chrono::microseconds(10);
  OverloadDetector d({10ms, 100ms});
  std::deque<Instant> waiting;  // arrivals; a probe is Instant{} at its place
  std::deque<Instant> probes;   // the due times of the probes in `waiting`
  Instant next_arrival = kT0;
  Instant next_due = kT0 + d.probePeriod();
  Duration busy{0};  // CPU still owed to the message being handled
  int offered = 0;
  int shed = 0;
  std::vector<Duration> waits;
  for (Instant now = kT0; now < kT0 + 3s; now += kTick) {
    for (; next_arrival <= now; next_arrival += every) waiting.push_back(next_arrival);
    if (next_due <= now) {
      waiting.push_back(Instant{});
      probes.push_back(next_due);
      next_due = Instant::max();
    }
    if ((now - kT0) % period >= on) continue;  // throttled
    for (Duration budget = kTick;
         budget > Duration(0) && (busy > Duration(0) || !waiting.empty());) {
      if (busy > Duration(0)) {
        const Duration spent = std::min(busy, budget);
        busy -= spent;
        budget -= spent;
        continue;
      }
      const Instant item = waiting.front();
      waiting.pop_front();
      if (item == Instant{}) {
        d.sample(now, now - probes.front(), now + d.probePeriod());
        probes.pop_front();
        next_due = now + d.probePeriod();
        continue;
      }
      const bool is_shed = d.shed(Priority::kNormal, now, d.draw()).has_value();
      busy = is_shed ? decide * 27 / 100 : decide;
      if (now < kT0 + 1s) continue;
      ++offered;
      shed += is_shed ? 1 : 0;
      if (!is_shed) waits.push_back(now - item);
    }
  }
  LoopRun run;
  run.shed = static_cast<double>(shed) / offered;
  std::sort(waits.begin(), waits.end());
  run.median_wait = waits[waits.size() / 2];
  run.p99_wait = waits[waits.size() * 99 / 100];
  return run;
}

}  // namespace

TEST_CASE(
    "overloaded by a quarter, a loop sheds about its excess and holds its queue near the target") {
  // Capacity one message per 100 µs, offered one per 80 µs: (1 - 0.8) / (1 - 0.27) = 27% of the
  // messages must be shed for the decided ones to fill the loop without a growing queue.
  const LoopRun alone = runLoop(80us, 100us, 10ms, 10ms);
  CHECK(alone.shed > 0.22);
  CHECK(alone.shed < 0.33);
  CHECK(alone.median_wait > 5ms);
  CHECK(alone.median_wait < 20ms);
  CHECK(alone.p99_wait < 40ms);
  // The same capacity as 10% of a CPU in 10 ms periods (9 ms stalls): the same share, a wait no
  // worse than the stalls and the target together.
  const LoopRun quota = runLoop(80us, 10us, 1ms, 10ms);
  CHECK(quota.shed > 0.22);
  CHECK(quota.shed < 0.33);
  CHECK(quota.median_wait < 25ms);
  CHECK(quota.p99_wait < 50ms);
}

TEST_CASE("a loop throttled by a CPU quota but keeping up sheds no normal check") {
  // 80% of its capacity, given in 1 ms of every 10 ms: every probe that falls in a stall runs up
  // to 9 ms late, yet nothing queues beyond the stall.
  const LoopRun run = runLoop(105us, 10us, 1ms, 10ms);
  CHECK(run.shed == 0);
  CHECK(run.p99_wait < 10ms);
}

TEST_CASE("a loop stalled past its probe is overloaded for whatever runs first after the stall") {
  OverloadDetector d({10ms, 100ms});
  d.sample(kT0, 0ms, kT0 + 5ms);
  // The probe was due at +5 ms; a check handled at +300 ms (before the probe runs) waited that
  // long, and the lag has been above the target for longer than an interval.
  const Instant late = kT0 + 300ms;
  CHECK(d.lagAt(late) == 295ms);
  CHECK(d.standingAt(late));
  CHECK(d.shed(Priority::kNormal, late) == ShedReason::kOverload);
  CHECK_FALSE(d.shed(Priority::kCritical, late));
}

TEST_CASE("deadlines shed any priority; a target of 0 sheds nothing else") {
  OverloadDetector off({0ms, 100ms});
  off.sample(kT0, 10s, kT0 + 1ms);
  CHECK_FALSE(off.shed(Priority::kSheddable, kT0 + 1s));
  CHECK(off.shed(Priority::kCritical, kT0 + 1s, false, kT0 + 999ms) == ShedReason::kDeadline);
  CHECK_FALSE(off.shed(Priority::kCritical, kT0 + 1s, false, kT0 + 1s));
  // No share either, however long the lag lasts.
  feed(off, kT0, 1s, 1s);
  CHECK(off.share() == 0);
  CHECK_FALSE(off.draw());
}

TEST_CASE("priorities parse by name; anything else is a clear error") {
  CHECK(*parsePriority("sheddable") == Priority::kSheddable);
  CHECK(*parsePriority("critical") == Priority::kCritical);
  CHECK(*parsePriority("normal") == Priority::kNormal);
  const auto bad = parsePriority("urgent");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("critical, normal or sheddable") != std::string::npos);
}

namespace {

struct ShedApi {
  ManualClock clock{Time(std::chrono::seconds(1'700'000'000))};
  std::unique_ptr<Store> store = Store::make({100'000, 64}).value();
  LimiterService service{*store, clock,
                         RuleSet::parseYaml("rules:\n"
                                            "  - {name: open, limit: 2, period: 1m}\n"
                                            "  - {name: closed, limit: 2, period: 1m, overload: "
                                            "deny}\n"
                                            "  - {name: db, limit: 1, lease_ttl: 1m, algorithm: "
                                            "concurrency}\n")
                             .value(),
                         ""};
  HttpApi api{service, nullptr, nullptr};
  OverloadDetector detector{{10ms, 100ms}};

  ShedApi() { OverloadDetector::setCurrent(&detector); }
  ~ShedApi() { OverloadDetector::setCurrent(nullptr); }

  HttpResponse get(const std::string& target,
                   std::vector<std::pair<std::string, std::string>> headers = {}) {
    HttpRequest req;
    req.method = "GET";
    req.target = target;
    const auto q = target.find('?');
    req.path = target.substr(0, q);
    req.query = q == std::string::npos ? "" : target.substr(q + 1);
    req.headers = std::move(headers);
    HttpResponse out;
    api.handle(req, [&](HttpResponse r) { out = std::move(r); });
    return out;
  }
  // A standing queue with 150 ms waits on this thread's loop.
  void overload() { feed(detector, clock.monotonic() - 300ms, 300ms, 150ms); }
};

std::string header(const HttpResponse& r, const std::string& name) {
  for (const auto& [k, v] : r.headers) {
    if (k == name) return v;
  }
  return "";
}

}  // namespace

TEST_CASE("a shed check answers its rule's overload policy, marked shed, and spends nothing") {
  ShedApi a;
  a.overload();
  // allow (the default): 200, allowed, marked; the key's budget is untouched.
  for (int i = 0; i < 5; ++i) {
    const HttpResponse r = a.get("/v1/check?rule=open&key=k&priority=sheddable");
    CHECK(r.status == 200);
    CHECK(header(r, "X-Throttlex-Shed") == "overload");
    const auto body = nlohmann::json::parse(r.body);
    CHECK(body["shed"] == "overload");
    CHECK(body["allowed"] == true);
    CHECK(body["limit"] == 2);
  }
  // deny: limited with Retry-After (never a 5xx; /v1/auth answers 403 as for any denial).
  HttpResponse r = a.get("/v1/check?rule=closed&key=k", {{"x-throttlex-priority", "sheddable"}});
  CHECK(r.status == 429);
  CHECK(header(r, "Retry-After") == "1");
  CHECK(nlohmann::json::parse(r.body)["shed"] == "overload");
  r = a.get("/v1/auth?rule=closed&key=k&priority=sheddable");
  CHECK(r.status == 403);
  CHECK(header(r, "X-Throttlex-Shed") == "overload");
  // Critical checks are decided: both units of the key are still there.
  for (int i = 0; i < 2; ++i) {
    r = a.get("/v1/check?rule=open&key=k&priority=critical");
    CHECK(r.status == 200);
    CHECK(header(r, "X-Throttlex-Shed").empty());
  }
  CHECK(a.get("/v1/check?rule=open&key=k&priority=critical").status == 429);
  // Normal checks that waited more than 10 targets in a standing queue are shed too.
  CHECK(header(a.get("/v1/check?rule=open&key=n"), "X-Throttlex-Shed") == "overload");
  // A bad priority is a 400 problem, shed or not.
  r = a.get("/v1/check?rule=open&key=k&priority=urgent");
  CHECK(r.status == 400);
  CHECK(r.content_type == "application/problem+json");
}

TEST_CASE(
    "releases and renewals are never shed; a shed acquire allowed by policy carries a lease") {
  ShedApi a;
  const HttpResponse held = a.get("/v1/check?rule=db&key=k&priority=critical");
  REQUIRE(held.status == 200);
  const std::string lease = nlohmann::json::parse(held.body)["lease"]["id"];
  a.overload();
  // A renewal keeps a held lease held: decided, whatever its priority and the load.
  const HttpResponse renewed = a.get("/v1/check?rule=db&key=k&priority=sheddable&renew=" + lease);
  CHECK(renewed.status == 200);
  CHECK(nlohmann::json::parse(renewed.body)["renew"] == "renewed");
  CHECK_FALSE(nlohmann::json::parse(renewed.body).contains("shed"));
  // Shed by policy (allow): a lease no node holds, whose release finds nothing.
  const auto shed = nlohmann::json::parse(a.get("/v1/check?rule=db&key=k&priority=sheddable").body);
  CHECK(shed["shed"] == "overload");
  const std::string unheld = shed["lease"]["id"];
  // A release gives capacity back: decided, whatever its priority and the load.
  for (const auto& [id, found] : {std::pair{lease, "released"}, std::pair{unheld, "unknown"}}) {
    const HttpResponse r = a.get("/v1/check?rule=db&key=k&priority=sheddable&release=" + id);
    CHECK(r.status == 200);
    const auto body = nlohmann::json::parse(r.body);
    CHECK_FALSE(body.contains("shed"));
    CHECK(body["release"] == found);
  }
}

TEST_CASE("without overload nothing is shed, whatever the priority") {
  ShedApi a;
  for (int i = 0; i < 2; ++i) {
    const HttpResponse r = a.get("/v1/check?rule=open&key=k&priority=sheddable");
    CHECK(r.status == 200);
    CHECK(header(r, "X-Throttlex-Shed").empty());
  }
  CHECK(a.get("/v1/check?rule=open&key=k&priority=sheddable").status == 429);
}

namespace {

CheckArgs ruleCheck(std::string_view rule, std::string_view key, Priority priority) {
  CheckArgs a;
  a.rule = rule;
  a.key = key;
  a.priority = priority;
  return a;
}

}  // namespace

TEST_CASE("an overloaded thread sheds a batch whole only when every check is shed alike") {
  ShedApi a;
  Router router(a.service, nullptr, nullptr);
  const auto shed = Priority::kSheddable;
  const std::vector<CheckArgs> batch = {ruleCheck("open", "k1", shed),
                                        ruleCheck("closed", "k2", shed),
                                        ruleCheck("open", "k3", shed)};
  ShedBatch out;
  CHECK_FALSE(router.shedWhole(batch, router.admit(), out));  // no overload: the batch is decided

  a.overload();
  out = {};
  REQUIRE(router.shedWhole(batch, router.admit(), out));
  // One answer per rule, worked out once; each check points at its rule's.
  REQUIRE(out.answers.size() == 2);
  CHECK(out.which == std::vector<std::uint8_t>{0, 1, 0});
  CHECK(out.answers[0].checks == 2);
  REQUIRE(out.answers[0].outcome.ok());
  CHECK(out.answers[0].outcome->allowed);
  CHECK(out.answers[0].outcome->shed == ShedReason::kOverload);
  REQUIRE(out.answers[1].outcome.ok());
  CHECK_FALSE(out.answers[1].outcome->allowed);
  CHECK(a.store->stats().entries == 0);  // nothing decided, nothing spent

  // Any check that must be answered on its own sends the whole batch the check-by-check way.
  CheckArgs release = ruleCheck("db", "k", shed);
  release.release = 7;
  CheckArgs refund = ruleCheck("open", "k", shed);
  refund.refund = true;
  CheckArgs inline_limit = ruleCheck("", "k", shed);
  inline_limit.limit = {Algorithm::kTokenBucket, 5, 1min, 0};
  for (const CheckArgs& odd :
       {ruleCheck("open", "k", Priority::kCritical), ruleCheck("db", "k", shed), release, refund,
        inline_limit, ruleCheck("open", "", shed)}) {
    std::vector<CheckArgs> mixed = batch;
    mixed.push_back(odd);
    out = {};
    CHECK_FALSE(router.shedWhole(mixed, router.admit(), out));
  }
}

TEST_CASE("over RPC a batch shed whole answers each check as it would be answered alone") {
  ShedApi a;
  Metrics metrics{Metrics::Options{"node-1", "0.1.0", a.store.get(), {}, {}, {}}};
  kj::EventLoop loop;
  kj::WaitScope ws(loop);
  Router router(a.service, nullptr, nullptr);
  RpcCounters counters;
  proto::Node::Client node(kj::heap<RpcService>(router, NodeInfoProvider{}, &metrics, counters,
                                                nullptr, proto::Role::kClient));
  const std::vector<std::pair<const char*, const char*>> checks = {
      {"open", "k1"}, {"closed", "k2"}, {"open", "k3"}, {"nope", "k4"}};
  const auto fill = [](proto::CheckRequest::Builder r, const char* rule, const char* key) {
    r.setRule(rule);
    r.setKey(key);
    r.setPriority(proto::Priority::SHEDDABLE);
  };
  a.overload();
  const auto sendBatch = [&](bool compact) {
    auto batch = node.checkBatchRequest();
    batch.setVersion(proto::PROTOCOL_VERSION);
    batch.setCompactShed(compact);
    auto list = batch.initChecks(static_cast<unsigned>(checks.size()));
    for (unsigned i = 0; i < checks.size(); ++i) fill(list[i], checks[i].first, checks[i].second);
    return batch.send().wait(ws);
  };
  const auto whole = sendBatch(false);
  REQUIRE(whole.getResults().size() == checks.size());
  const auto same = [](proto::CheckResult::Reader got, proto::CheckResult::Reader alone) {
    CHECK(got.getError().getCode() == alone.getError().getCode());
    CHECK(got.getAllowed() == alone.getAllowed());
    CHECK(got.getDecidedAllowed() == alone.getDecidedAllowed());
    CHECK(got.getLimit() == alone.getLimit());
    CHECK(got.getRemaining() == alone.getRemaining());
    CHECK(got.getResetAfterNs() == alone.getResetAfterNs());
    CHECK(got.getRetryAfterNs() == alone.getRetryAfterNs());
    CHECK(got.getPolicy() == alone.getPolicy());
    CHECK(got.getPeriodMs() == alone.getPeriodMs());
    CHECK(got.getShed() == alone.getShed());
  };
  for (unsigned i = 0; i < checks.size(); ++i) {
    auto one = node.checkRequest();
    one.setVersion(proto::PROTOCOL_VERSION);
    fill(one.initRequest(), checks[i].first, checks[i].second);
    CAPTURE(i);
    same(whole.getResults()[i], one.send().wait(ws).getResult());
  }
  CHECK(whole.getResults()[0].getShed() == proto::ShedReason::OVERLOAD);
  CHECK(whole.getResults()[3].getError().getCode() == proto::ErrorCode::NOT_FOUND);

  // A client that asks for compactShed gets each answer once and an index per check.
  const auto compact = sendBatch(true);
  CHECK(compact.getResults().size() == 0);
  REQUIRE(compact.getShedAnswers().size() == 3);  // open, closed, nope
  const auto index = compact.getShedIndex();
  REQUIRE(index.size() == checks.size());
  CHECK(index[0] == index[2]);
  for (unsigned i = 0; i < checks.size(); ++i) {
    CAPTURE(i);
    REQUIRE(index[i] < 3);
    same(compact.getShedAnswers()[index[i]], whole.getResults()[i]);
  }
  // Counted as the single checks are: 3 shed in each batch, 3 alone.
  const std::string text = metrics.render();
  CHECK(text.find("throttlex_shed_total{reason=\"overload\",priority=\"sheddable\"} 9") !=
        std::string::npos);
  CHECK(a.store->stats().entries == 0);
}

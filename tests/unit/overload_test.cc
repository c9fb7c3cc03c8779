// Overload protection (daemon/service/overload.h): the CoDel-style detector on recorded loop-lag
// sequences in virtual time, what a shed check answers over HTTP, and a batch shed whole over RPC.
#include <doctest/doctest.h>

#include <algorithm>
#include <deque>
#include <utility>

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

// Whether one message of one check of `priority`, handled at `now`, is shed (it draws from d's
// share, as a worker does).
std::optional<ShedReason> shedOne(OverloadDetector& d, Priority priority, Instant now,
                                  std::optional<Instant> deadline = std::nullopt) {
  Admission entry(now, &d);
  return d.shed(priority, entry, deadline);
}

}  // namespace

TEST_CASE("a burst sheds only sheddable checks; a standing queue sheds normal ones too") {
  OverloadDetector d({10ms, 100ms});
  CHECK(d.probePeriod() == 5ms);
  Instant now = feed(d, kT0, 50ms, 1ms);  // on time
  for (auto p : {Priority::kSheddable, Priority::kNormal, Priority::kCritical}) {
    CHECK_FALSE(shedOne(d, p, now));
  }
  // A burst: 30 ms of lag for 40 ms, above the target for 60 ms in all, not an interval yet.
  now = feed(d, now + 5ms, 40ms, 30ms);
  CHECK(shedOne(d, Priority::kSheddable, now) == ShedReason::kOverload);
  CHECK_FALSE(shedOne(d, Priority::kNormal, now));
  CHECK_FALSE(d.standingAt(now));
  // It lasts: a standing queue. Normal checks that waited more than 10 targets go too.
  now = feed(d, now + 5ms, 100ms, 150ms);
  CHECK(d.standingAt(now));
  CHECK(shedOne(d, Priority::kNormal, now) == ShedReason::kOverload);
  CHECK_FALSE(shedOne(d, Priority::kCritical, now));
  // A standing queue of shorter waits (above the target, below 10 targets) sheds normal checks by
  // the share, which 200 ms at 6 targets have driven to all of them; critical ones never.
  OverloadDetector mild({10ms, 100ms});
  const Instant t = feed(mild, kT0, 300ms, 60ms);
  CHECK(mild.standingAt(t));
  CHECK(mild.share() == 1);
  CHECK(shedOne(mild, Priority::kSheddable, t) == ShedReason::kOverload);
  CHECK(shedOne(mild, Priority::kNormal, t) == ShedReason::kOverload);
  CHECK_FALSE(shedOne(mild, Priority::kCritical, t));
  // One sample at or below the target ends the standing queue; sheddable checks keep going for an
  // interval (what queued behind the lag is still being read), then they are served again.
  d.sample(now + 5ms, 2ms, now + 10ms);
  CHECK_FALSE(d.standingAt(now + 5ms));
  CHECK_FALSE(shedOne(d, Priority::kNormal, now + 5ms));
  CHECK(shedOne(d, Priority::kSheddable, now + 5ms) == ShedReason::kOverload);
  now = feed(d, now + 10ms, 150ms, 2ms);
  CHECK_FALSE(shedOne(d, Priority::kSheddable, now));
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
  REQUIRE(held < 0.5);  // so that the spacing below is checked
  // ...and the draws shed that share of the messages, spaced evenly (never two in a row below 1/2).
  int shed = 0;
  bool last = false;
  for (int i = 0; i < 1000; ++i) {
    const bool now_shed = d.draw();
    shed += now_shed ? 1 : 0;
    CHECK_FALSE((now_shed && last));
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

// A worker loop in virtual time: messages arrive `burst` at a time every `every` and wait in
// order; the loop
// takes them one by one, asks the detector whether a normal check is shed (a message) and spends
// `decide` of CPU on a decided one, 27% of that on a shed one (bench/rpc_batch_bench's ratio).
// The probe is a timer: due every probePeriod(), it runs when the loop reaches it, behind what was
// ready before. The loop may use `on` of CPU in every `period` (a CFS quota): working past it, it
// is throttled until the period ends; waiting for work uses none (on == period: no quota).
struct LoopRun {
  double shed = 0;  // share of the messages of the last 2 s that were shed
  Duration median_wait{0};
  Duration p99_wait{0};  // of the decided ones: from arrival until the loop took them
};

LoopRun runLoop(Duration every, Duration decide, Duration on, Duration period,
                std::size_t burst = 1) {
  constexpr auto kTick = std::chrono::microseconds(10);
  OverloadDetector d({10ms, 100ms});
  std::deque<Instant> waiting;  // arrivals; a probe is Instant{} at its place
  std::deque<Instant> probes;   // the due times of the probes in `waiting`
  Instant next_arrival = kT0;
  Instant next_due = kT0 + d.probePeriod();
  Duration busy{0};   // CPU still owed to the message being handled
  Duration quota{0};  // CPU left in this period
  int offered = 0;
  int shed = 0;
  std::vector<Duration> waits;
  for (Instant now = kT0; now < kT0 + 3s; now += kTick) {
    for (; next_arrival <= now; next_arrival += every)
      waiting.insert(waiting.end(), burst, next_arrival);
    if (next_due <= now) {
      waiting.push_back(Instant{});
      probes.push_back(next_due);
      next_due = Instant::max();
    }
    if ((now - kT0) % period < kTick) quota = on;
    for (Duration budget = std::min<Duration>(kTick, quota);
         budget > Duration(0) && (busy > Duration(0) || !waiting.empty());) {
      if (busy > Duration(0)) {
        const Duration spent = std::min(busy, budget);
        busy -= spent;
        budget -= spent;
        quota -= spent;
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
      const bool is_shed = shedOne(d, Priority::kNormal, now).has_value();
      busy = is_shed ? decide * 27 / 100 : decide;
      if (now < kT0 + 1s) continue;
      ++offered;
      shed += is_shed ? 1 : 0;
      if (!is_shed) waits.push_back(now - item);
    }
  }
  LoopRun run;
  REQUIRE(offered > 0);
  run.shed = static_cast<double>(shed) / offered;
  if (waits.empty()) return run;  // everything shed: no wait to report
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
  // 10% of a CPU in 40 ms periods: 36 ms stalls, longer than the target, put most probes far past
  // it; about the same share, the wait of the stalls on top.
  const LoopRun long_stalls = runLoop(80us, 10us, 4ms, 40ms);
  CHECK(long_stalls.shed > 0.22);
  CHECK(long_stalls.shed < 0.33);
  CHECK(long_stalls.median_wait < 40ms);
  CHECK(long_stalls.p99_wait < 80ms);
}

TEST_CASE("a loop keeping up on average sheds no normal check, though its bursts meet its quota") {
  // 10% of a CPU in 40 ms periods (4 ms), 600 messages of 10 µs every 80 ms: 75% of its capacity,
  // but each burst is throttled for 36 ms before it drains. A burst is not a standing queue.
  const LoopRun bursts = runLoop(80ms, 10us, 4ms, 40ms, 600);
  CHECK(bursts.shed == 0);
  CHECK(bursts.p99_wait > 36ms);  // the stall was met
}

TEST_CASE("a loop stalled past its probe is overloaded for whatever runs first after the stall") {
  OverloadDetector d({10ms, 100ms});
  d.sample(kT0, 0ms, kT0 + 5ms);
  // The probe was due at +5 ms; a check handled at +300 ms (before the probe runs) waited that
  // long, and the lag has been above the target for longer than an interval.
  const Instant late = kT0 + 300ms;
  CHECK(d.lagAt(late) == 295ms);
  CHECK(d.standingAt(late));
  CHECK(shedOne(d, Priority::kNormal, late) == ShedReason::kOverload);
  CHECK_FALSE(shedOne(d, Priority::kCritical, late));
}

TEST_CASE("deadlines shed any priority; a target of 0 sheds nothing else") {
  OverloadDetector off({0ms, 100ms});
  off.sample(kT0, 10s, kT0 + 1ms);
  CHECK_FALSE(shedOne(off, Priority::kSheddable, kT0 + 1s));
  CHECK(shedOne(off, Priority::kCritical, kT0 + 1s, kT0 + 999ms) == ShedReason::kDeadline);
  CHECK_FALSE(shedOne(off, Priority::kCritical, kT0 + 1s, kT0 + 1s));
  // No share either, however long the lag lasts.
  feed(off, kT0, 1s, 1s);
  CHECK(off.share() == 0);
  CHECK_FALSE(off.draw());
}

TEST_CASE("a message draws the share at most once, and only for a check the share could shed") {
  // Two detectors alike, with a share between 0 and 1/2.
  OverloadDetector a({10ms, 100ms});
  OverloadDetector b({10ms, 100ms});
  Instant now{};
  for (OverloadDetector* d : {&a, &b}) {
    now = feed(*d, kT0, 150ms, 20ms);
    now = feed(*d, now + 5ms, 50ms, 10ms);
  }
  REQUIRE(a.share() > 0);
  REQUIRE(a.share() < 0.5);
  int shed = 0;
  for (int i = 0; i < 200; ++i) {
    Admission one(now, &a);
    const bool a_shed = a.shed(Priority::kNormal, one).has_value();
    // The same message with critical and sheddable checks first, and two normal ones: the
    // others draw nothing, the second normal check gets the first one's draw.
    Admission many(now, &b);
    CHECK_FALSE(b.shed(Priority::kCritical, many));
    CHECK(b.shed(Priority::kNormal, many, now - 1ms) == ShedReason::kDeadline);
    const bool first = b.shed(Priority::kNormal, many).has_value();
    CHECK(b.shed(Priority::kNormal, many).has_value() == first);
    CHECK(first == a_shed);
    shed += first ? 1 : 0;
  }
  CHECK(shed >= static_cast<int>(200 * a.share()) - 1);
  CHECK(shed <= static_cast<int>(200 * a.share()) + 1);
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
  Admission calm = router.admit();
  CHECK_FALSE(router.shedWhole(batch, calm, out));  // no overload: the batch is decided

  a.overload();
  out = {};
  Admission busy = router.admit();
  REQUIRE(router.shedWhole(batch, busy, out));
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
    Admission entry = router.admit();
    CHECK_FALSE(router.shedWhole(mixed, entry, out));
  }
}

TEST_CASE("a check parked at entry and routed again is decided, not shed as if new") {
  ShedApi a;
  Router router(a.service, nullptr, nullptr);
  a.overload();
  const CheckArgs check = ruleCheck("open", "k", Priority::kNormal);
  Forwarding forwarding;
  const auto entering = router.check(check, 0, forwarding);
  REQUIRE(entering.has_value());
  REQUIRE(entering->ok());
  CHECK((*entering)->shed == ShedReason::kOverload);  // a new check meets the overload

  struct Sink final : ForwardSink {
    std::vector<std::pair<std::size_t, Result<CheckOutcome>>> got;
    void deliver(std::size_t index, Result<CheckOutcome> outcome) override {
      got.emplace_back(index, std::move(outcome));
    }
  };
  auto sink = std::make_shared<Sink>();
  router.reroute(ForwardedCheck::from(check, 0), 7, sink, 0);
  REQUIRE(sink->got.size() == 1);
  CHECK(sink->got[0].first == 7);
  REQUIRE(sink->got[0].second.ok());
  CHECK_FALSE(sink->got[0].second->shed.has_value());
  CHECK(sink->got[0].second->decision.allowed);
  CHECK(a.store->stats().entries == 1);  // decided and spent
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

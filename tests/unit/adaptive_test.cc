// Adaptive rules (docs/adaptive.md): the digest, the control laws on recorded and simulated signal
// sequences, the rules file's adaptive block, the limiter service's effective limit and reports,
// the controller, the exchange and the wire decoders.
#include <doctest/doctest.h>

#include <capnp/message.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <random>

#include "daemon/adaptive/controller.h"
#include "daemon/adaptive/exchange.h"
#include "daemon/adaptive/wire.h"
#include "daemon/service/limiter_service.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

AdaptiveSpec spec(ControlLaw law) {
  AdaptiveSpec s;
  s.min = 10;
  s.max = 2000;
  s.latency_target = 100ms;
  s.law = law;
  return s;
}

IntervalSignals signals(std::uint64_t reports, Duration latency, std::uint64_t limited = 100,
                        double error_rate = 0) {
  IntervalSignals s;
  s.reports = reports;
  s.latency = latency;
  s.limited = limited;
  s.error_rate = error_rate;
  return s;
}

// A backend that serves `capacity` calls a second, FIFO, with a fixed service time: what is
// admitted beyond capacity queues, and every call's latency is the service time plus its wait.
// Steps in 1 ms; admitted calls arrive evenly at the limit's rate (demand is far above it).
struct QueueBackend {
  double capacity;
  Duration service = 20ms;
  double backlog = 0;  // calls waiting
  double carry = 0;    // fractional completions

  SignalDigest second(std::uint64_t limit) {
    SignalDigest d;
    for (int ms = 0; ms < 1000; ++ms) {
      backlog += static_cast<double>(limit) / 1000;
      const double served = std::min(backlog, capacity / 1000);
      backlog -= served;
      carry += served;
      const auto wait =
          std::chrono::duration_cast<Duration>(std::chrono::duration<double>(backlog / capacity));
      for (; carry >= 1; carry -= 1) {
        d.addLatency(service + wait);
        d.addOutcome(ReportOutcome::kOk);
      }
    }
    d.addChecks(limit, limit * 2);  // demand at 3x: two of three limited
    return d;
  }
};

// Runs a law against the backend: the limit decided at the end of each second applies to the
// next. Returns the limit in force each second.
std::vector<std::uint64_t> closedLoop(const AdaptiveSpec& s, std::uint64_t start, int seconds,
                                      double capacity, int double_at = -1,
                                      std::vector<Duration>* p99 = nullptr) {
  QueueBackend backend{capacity};
  std::uint64_t limit = start;
  LawMemory memory;
  std::vector<std::uint64_t> out;
  for (int t = 0; t < seconds; ++t) {
    if (t == double_at) backend.capacity *= 2;
    out.push_back(limit);
    const SignalDigest d = backend.second(limit);
    if (p99 != nullptr) p99->push_back(d.quantile(0.99).value_or(0ns));
    limit = nextLimit(s, limit, 1s, signalsOf(d, s), &memory).limit;
  }
  return out;
}

bool within(std::uint64_t v, double target, double share) {
  return std::abs(static_cast<double>(v) - target) <= share * target;
}

}  // namespace

TEST_CASE("digest buckets: every latency lands in a bucket whose upper edge is within 1/16") {
  std::uint64_t last_bucket = 0;
  for (std::uint64_t us : {1ULL, 2ULL, 3ULL, 15ULL, 16ULL, 17ULL, 100ULL, 999ULL, 1000ULL,
                           123456ULL, 99'999'999ULL, 3'600'000'000ULL}) {
    const int b = SignalDigest::bucketOf(us);
    CHECK(static_cast<std::uint64_t>(b) >= last_bucket);
    last_bucket = static_cast<std::uint64_t>(b);
    const std::uint64_t upper = SignalDigest::upperMicros(b);
    CHECK(upper >= us);
    CHECK(static_cast<double>(upper - us) <= static_cast<double>(us) / 16 + 1);
    CHECK(SignalDigest::bucketOf(upper) == b);  // the edge belongs to its bucket
    CHECK(SignalDigest::bucketOf(upper + 1) > b);
  }
  CHECK(SignalDigest::bucketOf(0) == 0);
  CHECK(SignalDigest::bucketOf(std::uint64_t{1} << 40) == SignalDigest::kBuckets - 1);
}

TEST_CASE("digest quantiles, merge and wire form") {
  SignalDigest a, b;
  for (int i = 1; i <= 90; ++i) a.addLatency(10ms);
  for (int i = 1; i <= 10; ++i) b.addLatency(500ms);
  a.addOutcome(ReportOutcome::kOk, 90);
  b.addOutcome(ReportOutcome::kTimeout, 10);
  b.addChecks(7, 3);
  CHECK(a.quantile(0.5).has_value());
  CHECK(SignalDigest{}.quantile(0.9) == std::nullopt);

  SignalDigest merged = a;
  merged.merge(b);
  CHECK(merged.reports() == 100);
  CHECK(merged.latencies() == 100);
  CHECK(merged.admitted() == 7);
  CHECK(merged.limited() == 3);
  // p90 is the 90th of 100 sorted latencies: still 10 ms; p91 is the first of the slow ones.
  CHECK(*merged.quantile(0.9) >= 10ms);
  CHECK(*merged.quantile(0.9) < 11ms);
  CHECK(*merged.quantile(0.91) >= 500ms);
  CHECK(*merged.quantile(0.91) < 532ms);

  SignalDigest decoded;
  REQUIRE(decoded.addBuckets(merged.buckets()));
  CHECK(decoded.quantile(0.9) == merged.quantile(0.9));
  CHECK(decoded.quantile(0.99) == merged.quantile(0.99));
  CHECK(decoded.latencies() == 100);
  CHECK_FALSE(decoded.addBuckets({std::uint64_t{SignalDigest::kBuckets} << 32 | 1}));
  CHECK(decoded.latencies() == 100);  // nothing added from a bad encoding
}

TEST_CASE("control laws on a recorded sequence: cut from what was delivered, raise under demand") {
  for (ControlLaw law : {ControlLaw::kAimd, ControlLaw::kGradient}) {
    CAPTURE(nameOf(law));
    const AdaptiveSpec s = spec(law);
    // Recorded from bench/adaptive_report.py's first seconds (limit 600, capacity 200): the
    // backend completed 200 calls in the interval with p90 at 2.1 s.
    LimitStep step = nextLimit(s, 600, 1s, signals(200, 2100ms));
    CHECK(step.limit <= 190);  // below what was delivered, however high the limit was
    CHECK(step.limit >= 100);  // and not below half of it
    CHECK(step.reason.find("above the 100.0ms target") != std::string::npos);

    // Still above the target while the queue drains, the limit already below what the service
    // completes: held, not cut again (and a breach never raises it).
    step = nextLimit(s, 100, 1s, signals(200, 900ms));
    CHECK(step.limit == 100);
    CHECK(step.reason.find("holding") != std::string::npos);
    CHECK(nextLimit(s, 100, 1s, signals(5000, 150ms)).limit == 100);

    // Latency within target and checks limited: raise.
    step = nextLimit(s, 190, 1s, signals(190, 20ms));
    CHECK(step.limit > 190);
    if (law == ControlLaw::kAimd) CHECK(step.limit == 190 + 20);  // max / 100
    if (law == ControlLaw::kGradient) CHECK(step.limit == 209);   // +10% far below target

    // Close to the target the gradient law raises less.
    if (law == ControlLaw::kGradient) CHECK(nextLimit(s, 190, 1s, signals(190, 95ms)).limit < 195);

    // Demand below the limit: hold, however fast the backend.
    IntervalSignals idle = signals(50, 20ms, 0);
    idle.admitted = 50;
    step = nextLimit(s, 190, 1s, idle);
    CHECK(step.limit == 190);
    CHECK(step.reason.find("demand below the limit") != std::string::npos);

    // Too few reports to say anything: hold.
    CHECK(nextLimit(s, 190, 1s, signals(3, 5s)).limit == 190);

    // Bounds.
    CHECK(nextLimit(s, 12, 1s, signals(11, 5s)).limit == 10);
    CHECK(nextLimit(s, 2000, 1s, signals(2000, 1ms)).limit == 2000);
  }
}

TEST_CASE("control laws read an error-rate ceiling") {
  AdaptiveSpec s = spec(ControlLaw::kGradient);
  s.latency_target = 0ns;
  s.error_rate_max = 0.05;
  const LimitStep cut = nextLimit(s, 400, 1s, signals(400, 10ms, 100, 0.25));
  CHECK(cut.limit == 320);  // 400 delivered * (1 - (0.25 - 0.05))
  CHECK(cut.reason.find("error rate 25.0% above 5.0%") != std::string::npos);
  CHECK(nextLimit(s, 400, 1s, signals(400, 10ms, 100, 0.01)).limit > 400);
}

TEST_CASE("a period longer than the interval: the delivered rate is scaled to the period") {
  const AdaptiveSpec s = spec(ControlLaw::kGradient);
  // 100 calls a second delivered, the limit is per minute: 6000 a minute at most.
  AdaptiveSpec wide = s;
  wide.max = 100'000;
  const LimitStep step = nextLimit(wide, 30'000, 60s, signals(100, 400ms));
  CHECK(step.limit <= 6000);
  CHECK(step.limit >= 3000);
}

TEST_CASE("a concurrency rule: the limit is calls in flight, by Little's law at the target") {
  AdaptiveSpec s = spec(ControlLaw::kGradient);
  s.min = 1;
  // 100 calls a second that take 900 ms: 90 in flight; at the 100 ms target 10 would do.
  const IntervalSignals slow = signals(100, 900ms);
  CHECK(concurrencyPeriod(s, slow, 30s) == 100ms);
  const LimitStep step = nextLimit(s, 40, concurrencyPeriod(s, slow, 30s), slow);
  CHECK(step.limit < 10);
  CHECK(step.limit >= 5);
  // Read as a rate per lease_ttl instead, 3000 calls a 30 s "period": 40 would look far below it.
  CHECK(nextLimit(s, 40, 30s, slow).limit == 40);
  // Without a latency target the measured latency stands in; without either, the lease's TTL.
  s.latency_target = Duration(0);
  CHECK(concurrencyPeriod(s, slow, 30s) == 900ms);
  CHECK(concurrencyPeriod(s, IntervalSignals{}, 30s) == 30s);
}

TEST_CASE("closed loop on a queueing backend: the gradient law settles near capacity and follows") {
  const AdaptiveSpec s = spec(ControlLaw::kGradient);
  std::vector<Duration> p99;
  const auto limits = closedLoop(s, 600, 90, 200, 60, &p99);
  // Settled within 15 s, within 20% of capacity for the following 30 s, backend p99 under twice
  // the target there.
  for (int t = 15; t < 45; ++t) {
    CAPTURE(t);
    CHECK(within(limits[static_cast<std::size_t>(t)], 200, 0.2));
    CHECK(p99[static_cast<std::size_t>(t)] < 200ms);
  }
  // Capacity doubles at 60 s: within 20 s the limit is within 20% of 400.
  const auto follow = std::find_if(limits.begin() + 60, limits.end(),
                                   [](std::uint64_t l) { return within(l, 400, 0.2); });
  REQUIRE(follow != limits.end());
  CHECK(follow - (limits.begin() + 60) <= 20);
}

TEST_CASE("closed loop: AIMD also settles near capacity, with a deeper sawtooth") {
  const AdaptiveSpec s = spec(ControlLaw::kAimd);
  const auto limits = closedLoop(s, 600, 60, 200);
  for (int t = 15; t < 45; ++t) {
    CAPTURE(t);
    CHECK(within(limits[static_cast<std::size_t>(t)], 200, 0.2));
  }
}

TEST_CASE("rules file: the adaptive block, its defaults and its errors") {
  auto set = RuleSet::parseYaml(R"(rules:
  - name: backend
    limit: 1000
    period: 1s
    adaptive:
      min: 10
      max: 2000
      latency_target: 100ms
      percentile: 99
      error_rate_max: 5%
      law: aimd
      interval: 2s
)");
  REQUIRE(set.ok());
  const RuleSet::Entry* e = set->find("backend");
  REQUIRE(e != nullptr);
  REQUIRE(e->rule.adaptive.has_value());
  REQUIRE(e->cell != nullptr);
  CHECK(e->cell->limit() == 1000);
  const AdaptiveSpec& a = *e->rule.adaptive;
  CHECK(a.min == 10);
  CHECK(a.max == 2000);
  CHECK(a.latency_target == 100ms);
  CHECK(a.percentile == doctest::Approx(0.99));
  CHECK(a.error_rate_max == doctest::Approx(0.05));
  CHECK(a.law == ControlLaw::kAimd);
  CHECK(a.interval == 2s);

  auto defaults = RuleSet::parseYaml(
      "rules:\n  - {name: b, limit: 100, period: 1s, adaptive: {max: 500, latency_target: "
      "50ms}}\n");
  REQUIRE(defaults.ok());
  const AdaptiveSpec& d = *defaults->find("b")->rule.adaptive;
  CHECK(d.min == 1);
  CHECK(d.percentile == doctest::Approx(0.9));
  CHECK(d.law == ControlLaw::kGradient);
  CHECK(d.interval == 1s);
  CHECK(defaults->find("b")->rule.spec.limit == 100);

  const auto bad = [](const std::string& block) {
    auto r = RuleSet::parseYaml("rules:\n  - {name: b, limit: 100, period: 1s, adaptive: " + block +
                                "}\n");
    REQUIRE_FALSE(r.ok());
    return r.error().message;
  };
  CHECK(bad("{latency_target: 50ms}").find("missing 'max'") != std::string::npos);
  CHECK(bad("{max: 50, latency_target: 50ms}").find("must lie within min") != std::string::npos);
  CHECK(bad("{min: 200, max: 500, latency_target: 50ms}").find("starting limit") !=
        std::string::npos);
  CHECK(bad("{max: 500}").find("needs a signal") != std::string::npos);
  CHECK(bad("{max: 500, latency_target: 50ms, law: pid}").find("aimd or gradient") !=
        std::string::npos);
  CHECK(bad("{max: 500, latency_target: 50ms, percentile: 100}").find("percentile") !=
        std::string::npos);
  CHECK(bad("{max: 500, latency_target: 50ms, percentile: ninety}").find("must be a number") !=
        std::string::npos);
  CHECK(bad("{max: 500, latency_target: 50ms, interval: 10ms}").find("interval") !=
        std::string::npos);
  CHECK(bad("{max: 500, latency_target: 50ms, targte: 1}").find("unknown field 'targte'") !=
        std::string::npos);
  CHECK(bad("[1, 2]").find("expected a mapping") != std::string::npos);
}

namespace {

struct ServiceFixture {
  ManualClock clock{Time(std::chrono::seconds(1'700'000'000))};
  std::unique_ptr<Store> store = Store::make({100'000, 64}).value();
  LimiterService service{*store, clock, rules(1000, 2000), ""};

  static RuleSet rules(std::uint64_t start, std::uint64_t max) {
    Rule backend;
    backend.name = "backend";
    backend.spec = {Algorithm::kTokenBucket, start, 1s, 0};
    AdaptiveSpec a;
    a.min = 10;
    a.max = max;
    a.latency_target = 100ms;
    backend.adaptive = a;
    Rule plain;
    plain.name = "plain";
    plain.spec = {Algorithm::kTokenBucket, 5, 1s, 0};
    return RuleSet::make({backend, plain}).value();
  }
  AdaptiveCell& cell() { return *service.currentRules()->find("backend")->cell; }
};

CheckArgs check(std::string_view key) {
  CheckArgs a;
  a.key = key;
  a.rule = "backend";
  return a;
}

}  // namespace

TEST_CASE("the effective limit replaces the rule's limit for every key; checks are counted") {
  ServiceFixture f;
  CHECK(f.service.check(check("k1"))->decision.limit == 1000);
  AdaptiveVerdict v;
  v.limit = 3;
  v.reason = "test";
  f.cell().apply(v, f.clock.now());
  int allowed = 0;
  for (int i = 0; i < 10; ++i) allowed += f.service.check(check("k2"))->allowed ? 1 : 0;
  CHECK(allowed == 3);
  CHECK(f.service.check(check("k3"))->decision.limit == 3);
  const SignalDigest d = f.cell().take();
  CHECK(d.admitted() == 5);  // k1, 3 of k2, k3
  CHECK(d.limited() == 7);
  CHECK(f.cell().take().admitted() == 0);  // taken
}

TEST_CASE("reports: unknown rule 404, not adaptive 400, bad latency 400, batches all or nothing") {
  ServiceFixture f;
  std::vector<ReportArgs> ok = {{"backend", 20ms, ReportOutcome::kOk},
                                {"backend", std::nullopt, ReportOutcome::kTimeout}};
  CHECK(f.service.report(ok).value() == 2);
  std::vector<ReportArgs> unknown = {{"backend", 20ms, ReportOutcome::kOk},
                                     {"nope", 20ms, ReportOutcome::kOk}};
  auto r = f.service.report(unknown);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::kNotFound);
  CHECK(r.error().message.find("report #1") != std::string::npos);
  std::vector<ReportArgs> plain = {{"plain", 20ms, ReportOutcome::kOk}};
  CHECK(f.service.report(plain).error().code == ErrorCode::kInvalidArgument);
  std::vector<ReportArgs> negative = {{"backend", -1ms, ReportOutcome::kOk}};
  CHECK(f.service.report(negative).error().code == ErrorCode::kInvalidArgument);
  std::vector<ReportArgs> absurd = {{"backend", 2h, ReportOutcome::kOk}};
  CHECK(f.service.report(absurd).error().code == ErrorCode::kInvalidArgument);
  const SignalDigest d = f.cell().take();
  CHECK(d.reports() == 2);  // only the first batch
  CHECK(d.outcome(ReportOutcome::kTimeout) == 1);
  CHECK(d.latencies() == 1);
  CHECK(f.cell().reported()[static_cast<std::size_t>(ReportOutcome::kOk)] == 1);
}

TEST_CASE("a flood of reports keeps the digest's size: memory is O(1) per rule") {
  ServiceFixture f;
  std::mt19937 rng(7);
  std::vector<ReportArgs> batch(1000, {"backend", 0ns, ReportOutcome::kOk});
  for (int round = 0; round < 200; ++round) {
    for (auto& r : batch) r.latency = Duration(rng() % 3'600'000'000'000ULL);
    REQUIRE(f.service.report(batch).ok());
  }
  const SignalDigest d = f.cell().take();
  CHECK(d.reports() == 200'000);
  CHECK(d.latencies() == 200'000);
  // Every report is in the histogram's fixed buckets: their counts (the wire form's low 32 bits)
  // add up to all of them, none lost to saturation.
  std::uint64_t in_buckets = 0;
  for (const std::uint64_t b : d.buckets()) in_buckets += b & 0xffff'ffffULL;
  CHECK(in_buckets == 200'000);
  static_assert(sizeof(SignalDigest) < 4096, "a digest's size does not depend on its reports");
}

TEST_CASE("a reload keeps the effective limit and clamps it to new bounds") {
  ServiceFixture f;
  AdaptiveVerdict v;
  v.limit = 1500;
  v.reason = "moved";
  f.cell().apply(v, f.clock.now());
  // Same bounds: kept.
  REQUIRE(f.service.setRule(f.service.currentRules()->find("backend")->rule).ok());
  CHECK(f.cell().limit() == 1500);
  CHECK(f.service.check(check("k"))->decision.limit == 1500);
  // max lowered to 1200: clamped, and the history says why.
  Rule narrower = f.service.currentRules()->find("backend")->rule;
  narrower.adaptive->max = 1200;
  REQUIRE(f.service.setRule(narrower).ok());
  CHECK(f.cell().limit() == 1200);
  CHECK(f.cell().history().back().reason.find("clamped") != std::string::npos);
  // No longer adaptive: the rule's own limit again, and reports refused.
  Rule fixed = narrower;
  fixed.adaptive.reset();
  REQUIRE(f.service.setRule(fixed).ok());
  CHECK(f.service.check(check("k2"))->decision.limit == 1000);
  std::vector<ReportArgs> one = {{"backend", 1ms, ReportOutcome::kOk}};
  CHECK(f.service.report(one).error().code == ErrorCode::kInvalidArgument);
}

TEST_CASE("nextAligned: the next point at a phase of an epoch-aligned interval") {
  const Time t(std::chrono::seconds(1000) + 300ms);
  CHECK(nextAligned(t, 1s, 0.5) == Time(std::chrono::seconds(1000) + 500ms));
  CHECK(nextAligned(t, 1s, 0.1) == Time(std::chrono::seconds(1001) + 100ms));
  CHECK(nextAligned(Time(std::chrono::seconds(1000) + 500ms), 1s, 0.5) ==
        Time(std::chrono::seconds(1001) + 500ms));  // strictly after
}

TEST_CASE("controller: merges digests, steps once per interval, starts from the nodes' limit") {
  ServiceFixture f;
  f.clock.set(Time(std::chrono::seconds(2'000'000'000) + 100ms));
  AdaptiveController c(f.service, f.clock);
  SignalDigest slow;
  for (int i = 0; i < 150; ++i) {
    slow.addLatency(400ms);
    slow.addOutcome(ReportOutcome::kOk);
  }
  slow.addChecks(150, 300);
  // The first step after the state began only starts counting: what came before it covers part
  // of an interval.
  CHECK(c.absorb(std::vector<RuleDigest>{{"backend", slow, 800}})[0].verdict.limit == 800);
  f.clock.advance(400ms);
  c.step();
  f.clock.advance(100ms);  // 0.1 into the next interval: a node's send

  // Two nodes report; the first says the nodes apply 800 (a controller that moved here).
  const std::vector<RuleDigest> first = {{"backend", slow, 800}, {"plain", {}, 5}};
  auto v = c.absorb(first);
  REQUIRE(v.size() == 2);
  CHECK(v[0].controlled);
  CHECK(v[0].verdict.limit == 800);
  CHECK(v[0].verdict.reason.find("kept the limit the nodes applied") != std::string::npos);
  CHECK_FALSE(v[1].controlled);  // not adaptive
  const std::vector<RuleDigest> second = {{"backend", slow, 790}};
  CHECK(c.absorb(second)[0].verdict.limit == 800);

  c.step();  // 100 ms into the interval: not yet
  CHECK(c.absorb(std::vector<RuleDigest>{{"backend", {}, 800}})[0].verdict.limit == 800);
  f.clock.advance(900ms);  // the step half an interval after the next boundary
  c.step();
  const RuleVerdict after = c.absorb(std::vector<RuleDigest>{{"backend", {}, 800}})[0];
  // 300 calls delivered, p90 400 ms against 100 ms: cut from 300.
  CHECK(after.verdict.limit < 300);
  CHECK(after.verdict.signals.reports == 300);
  CHECK(after.verdict.reason.find("above") != std::string::npos);

  // Not heard of for three intervals: forgotten (another node controls it now).
  f.clock.advance(3500ms);
  c.step();
  CHECK(c.controlled() == 0);
}

namespace {

RingView ringOf(std::vector<std::string> members, const std::string& self) {
  RingView v;
  v.ring = Ring(members);
  for (const auto& m : v.ring.members()) v.rpc_address.push_back(m + ":7400");
  const auto& sorted = v.ring.members();
  v.self =
      static_cast<std::uint32_t>(std::find(sorted.begin(), sorted.end(), self) - sorted.begin());
  return v;
}

}  // namespace

TEST_CASE("exchange: digests go to the ring's controller; a failed call keeps them for the next") {
  ServiceFixture f;
  AdaptiveController local(f.service, f.clock);
  RingHolder ring;
  // Find a node id that is not the controller of "backend" in a ring with one other member.
  RingView view = ringOf({"a", "b"}, "a");
  if (view.peerFor(adaptiveSlot("backend")) == RingView::kNoPeer) view = ringOf({"a", "b"}, "b");
  REQUIRE(view.peerFor(adaptiveSlot("backend")) != RingView::kNoPeer);
  const std::string controller_address = view.rpc_address[view.peerFor(adaptiveSlot("backend"))];
  ring.publish(std::make_shared<const RingView>(view));

  bool fail = true;
  std::vector<std::vector<RuleDigest>> sent;
  AdaptiveExchange x(f.service, local, &ring, f.clock,
                     [&](const std::string& address,
                         std::span<const RuleDigest> digests) -> Result<std::vector<RuleVerdict>> {
                       CHECK(address == controller_address);
                       sent.emplace_back(digests.begin(), digests.end());
                       if (fail) return Error{ErrorCode::kUnavailable, "down"};
                       std::vector<RuleVerdict> out;
                       for (const auto& d : digests)
                         out.push_back({d.rule, true, {321, "remote", {}}});
                       return out;
                     });
  std::vector<ReportArgs> reports(5, {"backend", 30ms, ReportOutcome::kOk});
  REQUIRE(f.service.report(reports).ok());
  x.round(true);
  REQUIRE(sent.size() == 1);
  CHECK(sent[0][0].digest.reports() == 5);
  CHECK(sent[0][0].known_limit == 1000);
  CHECK(f.cell().limit() == 1000);  // unchanged while the controller is away
  CHECK(x.stats().failures == 1);

  REQUIRE(f.service.report(reports).ok());
  fail = false;
  x.round(true);
  REQUIRE(sent.size() == 2);
  CHECK(sent[1][0].digest.reports() == 10);  // the failed round's reports went again
  CHECK(f.cell().limit() == 321);
  CHECK(f.cell().verdict().reason == "remote");
  CHECK(local.controlled() == 0);  // nothing was controlled here
}

TEST_CASE("wire: digests and verdicts round-trip; decoders refuse what a peer could get wrong") {
  capnp::MallocMessageBuilder m;
  auto root = m.initRoot<proto::Limiter::AdaptiveExchangeParams>();
  SignalDigest d;
  d.addLatency(42ms);
  d.addOutcome(ReportOutcome::kOverloaded, 3);
  d.addChecks(9, 4);
  auto list = root.initDigests(1);
  encode(RuleDigest{"backend", d, 77}, list[0]);
  auto back = decodeDigests(root.getDigests().asReader());
  REQUIRE(back.ok());
  CHECK((*back)[0].rule == "backend");
  CHECK((*back)[0].known_limit == 77);
  CHECK((*back)[0].digest.outcome(ReportOutcome::kOverloaded) == 3);
  CHECK((*back)[0].digest.quantile(0.5) == d.quantile(0.5));
  CHECK((*back)[0].digest.admitted() == 9);

  list[0].setRule("bad name!");
  CHECK_FALSE(decodeDigests(root.getDigests().asReader()).ok());
  list[0].setRule("backend");
  list[0].initBuckets(1).set(0, std::uint64_t{9999} << 32 | 1);
  CHECK_FALSE(decodeDigests(root.getDigests().asReader()).ok());
  list[0].initBuckets(0);
  list[0].initOutcomes(5);
  CHECK_FALSE(decodeDigests(root.getDigests().asReader()).ok());

  capnp::MallocMessageBuilder r;
  auto reports = r.initRoot<proto::Limiter::ReportParams>().initReports(2);
  reports[0].setRule("backend");
  reports[0].setLatencyNs(5'000'000);
  reports[1].setRule("backend");
  reports[1].setOutcome(proto::ReportOutcome::TIMEOUT);
  auto decoded = decodeReports(reports.asReader());
  REQUIRE(decoded.ok());
  CHECK((*decoded)[0].latency == 5ms);
  CHECK_FALSE((*decoded)[1].latency.has_value());  // -1 by default: none
  CHECK((*decoded)[1].outcome == ReportOutcome::kTimeout);
  reports[0].setLatencyNs(-5);
  CHECK_FALSE(decodeReports(reports.asReader()).ok());
  reports[0].setLatencyNs(std::chrono::duration_cast<Duration>(2h).count());
  CHECK_FALSE(decodeReports(reports.asReader()).ok());
}

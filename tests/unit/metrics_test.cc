// Metrics (daemon/metrics/metrics.h): what a scrape shows. Per-thread counters sum exactly, the
// latency histogram counts each request in the right bucket, and each provider's families appear
// with its values only when it is given. Runs under TSan in CI (the "concurrency" label).
#include <doctest/doctest.h>

#include <array>
#include <latch>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "daemon/metrics/metrics.h"
#include "daemon/service/limiter_service.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

using Labels = std::map<std::string, std::string>;

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

// A parsed text exposition: one sample per line `name{k="v",...} value`, in order. Label values
// here never hold quotes or commas, so no unescaping is needed.
class Scrape {
 public:
  explicit Scrape(const std::string& text) {
    std::istringstream lines(text);
    std::string line;
    int malformed = 0;
    while (std::getline(lines, line)) {
      if (line.empty() || line[0] == '#') continue;
      auto s = parseLine(line);
      if (s) samples_.push_back(std::move(*s));
      malformed += s ? 0 : 1;
    }
    CHECK(malformed == 0);
  }

  // The samples of `name` that carry every label of `labels` (and maybe more), in order.
  std::vector<Sample> samples(const std::string& name, const Labels& labels = {}) const {
    std::vector<Sample> out;
    for (const Sample& s : samples_) {
      if (s.name != name) continue;
      bool match = true;
      for (const auto& [k, v] : labels) {
        const auto it = s.labels.find(k);
        match = match && it != s.labels.end() && it->second == v;
      }
      if (match) out.push_back(s);
    }
    return out;
  }

  // The value of the one sample of `name` with `labels`.
  double value(const std::string& name, const Labels& labels = {}) const {
    const auto found = samples(name, labels);
    INFO(name);
    REQUIRE(found.size() == 1);
    return found[0].value;
  }

 private:
  static std::optional<Sample> parseLine(const std::string& line) {
    Sample s;
    const std::size_t space = line.rfind(' ');
    if (space == std::string::npos) return std::nullopt;
    s.value = std::stod(line.substr(space + 1));
    const std::string series = line.substr(0, space);
    const std::size_t brace = series.find('{');
    s.name = series.substr(0, brace);
    if (brace == std::string::npos) return s;
    std::istringstream pairs(series.substr(brace + 1, series.size() - brace - 2));
    std::string pair;
    while (std::getline(pairs, pair, ',')) {
      const std::size_t eq = pair.find("=\"");
      if (eq == std::string::npos || pair.back() != '"') return std::nullopt;
      s.labels[pair.substr(0, eq)] = pair.substr(eq + 2, pair.size() - eq - 3);
    }
    return s;
  }

  std::vector<Sample> samples_;
};

constexpr std::array<Api, 3> kApis = {Api::kHttp, Api::kRpc, Api::kRls};
constexpr std::array<RouteKind, 3> kRoutes = {RouteKind::kLocal, RouteKind::kForwarded,
                                              RouteKind::kDegraded};
constexpr std::array<Outcome, 4> kOutcomes = {Outcome::kAllowed, Outcome::kLimited, Outcome::kError,
                                              Outcome::kShed};
const char* apiName(Api a) {
  return a == Api::kHttp ? "http" : a == Api::kRpc ? "rpc" : "rls";
}
const char* outcomeName(Outcome o) {
  switch (o) {
    case Outcome::kAllowed:
      return "allowed";
    case Outcome::kLimited:
      return "limited";
    case Outcome::kError:
      return "error";
    case Outcome::kShed:
      return "shed";
  }
  return "";
}

Metrics::Options named() {
  Metrics::Options o;
  o.node_id = "node-7";
  o.version = "9.9.9";
  return o;
}

}  // namespace

TEST_CASE("requests recorded on several threads sum exactly per decision, route and API") {
  Metrics m(named());
  constexpr int kThreads = 4;
  // Combination c (of 36) is recorded (c + 1) * 10 times by each thread, so a count that lands
  // under the wrong labels shows.
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      int c = 0;
      for (Api api : kApis) {
        for (RouteKind route : kRoutes) {
          for (Outcome outcome : kOutcomes) {
            for (int i = 0; i < (c + 1) * 10; ++i) m.recordRequest(api, route, outcome, 0ns);
            ++c;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();

  const Scrape text(m.render());
  CHECK(text.samples("throttlex_requests_total").size() == 36);  // 3 APIs x 3 routes x 4
  int c = 0;
  for (Api api : kApis) {
    double api_total = 0;
    for (RouteKind route : kRoutes) {
      for (Outcome outcome : kOutcomes) {
        const double expected = kThreads * (c + 1) * 10;
        CHECK(text.value("throttlex_requests_total", {{"api", apiName(api)},
                                                      {"route", std::string(nameOf(route))},
                                                      {"decision", outcomeName(outcome)}}) ==
              expected);
        api_total += expected;
        ++c;
      }
    }
    // Each request is also one latency sample of its API.
    CHECK(text.value("throttlex_request_duration_seconds_count", {{"api", apiName(api)}}) ==
          api_total);
  }
}

TEST_CASE("a request's latency is counted in the first bucket whose bound it does not exceed") {
  struct Case {
    Duration latency;
    std::size_t bucket;  // index into kLatencyBounds; kLatencyBounds.size() is +Inf
  };
  const std::size_t inf = kLatencyBounds.size();
  const std::vector<Case> cases = {
      {0ns, 0},    {10us, 0},  {10'001ns, 1}, {30us, 2},        {1ms, 6},
      {1001us, 7}, {99ms, 11}, {100ms, 11},   {100'001us, inf}, {5s, inf},
  };
  for (const Case& c : cases) {
    CAPTURE(c.latency.count());
    Metrics m(named());
    m.recordRequest(Api::kRpc, RouteKind::kLocal, Outcome::kAllowed, c.latency);
    const Scrape text(m.render());
    const auto buckets =
        text.samples("throttlex_request_duration_seconds_bucket", {{"api", "rpc"}});
    REQUIRE(buckets.size() == kLatencyBounds.size() + 1);
    for (std::size_t b = 0; b < buckets.size(); ++b) {
      CAPTURE(b);
      if (b < kLatencyBounds.size()) {
        CHECK(std::stod(buckets[b].labels.at("le")) == doctest::Approx(kLatencyBounds[b]));
      } else {
        CHECK(buckets[b].labels.at("le") == "+Inf");
      }
      CHECK(buckets[b].value == (b >= c.bucket ? 1 : 0));  // cumulative
    }
    CHECK(text.value("throttlex_request_duration_seconds_count", {{"api", "rpc"}}) == 1);
    CHECK(text.value("throttlex_request_duration_seconds_sum", {{"api", "rpc"}}) ==
          doctest::Approx(std::chrono::duration<double>(c.latency).count()));
    CHECK(text.value("throttlex_request_duration_seconds_count", {{"api", "http"}}) == 0);
  }
}

TEST_CASE(
    "checks are counted per rule: decisions, near the limit, shadow; the series are bounded") {
  Metrics m(named());
  CHECK(Scrape(m.render()).value("throttlex_shadow_limited_total") == 0);
  auto decision = [](bool allowed, std::uint64_t remaining) {
    Decision d;
    d.allowed = allowed;
    d.limit = 10;
    d.remaining = remaining;
    return d;
  };
  std::thread other([&] { m.recordRule("api", decision(true, 2), false); });  // 80% used: near
  other.join();
  m.recordRule("api", decision(true, 3), false);   // 70% used
  m.recordRule("api", decision(false, 0), false);  // limited
  m.recordRule("dry", decision(false, 0), true);   // a shadow rule that would have limited
  m.recordRule("dry", decision(true, 9), true);
  const Scrape text(m.render());
  CHECK(text.value("throttlex_rule_checks_total", {{"rule", "api"}, {"decision", "allowed"}}) == 2);
  CHECK(text.value("throttlex_rule_checks_total", {{"rule", "api"}, {"decision", "limited"}}) == 1);
  CHECK(text.value("throttlex_rule_near_limit_total", {{"rule", "api"}}) == 1);
  CHECK(text.value("throttlex_rule_shadow_limited_total", {{"rule", "api"}}) == 0);
  CHECK(text.value("throttlex_rule_shadow_limited_total", {{"rule", "dry"}}) == 1);
  CHECK(text.value("throttlex_shadow_limited_total") == 1);
  for (const Sample& s : text.samples("throttlex_requests_total")) CHECK(s.value == 0);

  // A thread keeps at most kMaxRuleSeries rules; the rest count under "_other".
  Metrics many(named());
  for (std::size_t i = 0; i < Metrics::kMaxRuleSeries + 5; ++i) {
    many.recordRule("r" + std::to_string(i), decision(true, 5), false);
  }
  const Scrape bounded(many.render());
  CHECK(bounded.samples("throttlex_rule_near_limit_total").size() == Metrics::kMaxRuleSeries + 1);
  CHECK(bounded.value("throttlex_rule_checks_total",
                      {{"rule", Metrics::kOtherRules}, {"decision", "allowed"}}) == 5);
}

TEST_CASE("forwarding stats appear with their values, per peer") {
  ForwarderStats f;
  f.peers.push_back({"b", "10.0.0.2:7400", BreakerState::kOpen, 3, 7, 1, 2});
  f.peers.push_back({"c", "10.0.0.3:7400", BreakerState::kClosed, 11, 13, 0, 0});
  f.degraded = 4;
  f.standin = 5;
  f.rerouted = 6;
  f.not_decided = 8;
  f.silences = 9;
  f.batch_sizes[0] = 2;  // two batches of 1
  f.batch_sizes[3] = 1;  // one of 6..10
  f.batch_size_sum = 9;
  f.latency[kForwardLatencyBounds.size()] = 1;  // one past the last bound
  f.latency_sum_seconds = 0.5;
  Metrics::Options o = named();
  o.forwarding = [f] { return f; };
  const Scrape text(Metrics(o).render());

  CHECK(text.value("throttlex_forward_calls_total", {{"peer", "b"}}) == 3);
  CHECK(text.value("throttlex_forward_checks_total", {{"peer", "b"}}) == 7);
  CHECK(text.value("throttlex_forward_failures_total", {{"peer", "b"}}) == 1);
  CHECK(text.value("throttlex_breaker_opens_total", {{"peer", "b"}}) == 2);
  CHECK(text.value("throttlex_forward_calls_total", {{"peer", "c"}}) == 11);
  CHECK(text.value("throttlex_forward_checks_total", {{"peer", "c"}}) == 13);
  const std::map<std::string, double> b_states = {{"closed", 0}, {"open", 1}, {"half_open", 0}};
  const std::map<std::string, double> c_states = {{"closed", 1}, {"open", 0}, {"half_open", 0}};
  for (const auto& [state, v] : b_states) {
    CHECK(text.value("throttlex_breaker_state", {{"peer", "b"}, {"state", state}}) == v);
  }
  for (const auto& [state, v] : c_states) {
    CHECK(text.value("throttlex_breaker_state", {{"peer", "c"}, {"state", state}}) == v);
  }
  CHECK(text.value("throttlex_degraded_total") == 4);
  CHECK(text.value("throttlex_forward_standin_total") == 5);
  CHECK(text.value("throttlex_forward_rerouted_total") == 6);
  CHECK(text.value("throttlex_forward_not_decided_total") == 8);
  CHECK(text.value("throttlex_forward_silences_total") == 9);
  CHECK(text.value("throttlex_forward_batch_size_count") == 3);
  CHECK(text.value("throttlex_forward_batch_size_sum") == 9);
  CHECK(text.value("throttlex_forward_batch_size_bucket", {{"le", "1"}}) == 2);
  CHECK(text.value("throttlex_forward_batch_size_bucket", {{"le", "5"}}) == 2);
  CHECK(text.value("throttlex_forward_batch_size_bucket", {{"le", "10"}}) == 3);
  CHECK(text.value("throttlex_forward_duration_seconds_count") == 1);
  CHECK(text.value("throttlex_forward_duration_seconds_bucket", {{"le", "+Inf"}}) == 1);
  CHECK(text.value("throttlex_forward_duration_seconds_sum") == doctest::Approx(0.5));
}

TEST_CASE("cluster stats appear with their values") {
  ClusterStats c;
  c.alive = 3;
  c.suspect = 1;
  c.dead = 2;
  c.left = 4;
  c.packets_sent = 100;
  c.packets_received = 90;
  c.dropped_malformed = 5;
  c.dropped_foreign_cluster = 6;
  c.dropped_version = 7;
  c.dropped_misdirected = 8;
  c.send_failures = 11;
  Metrics::Options o = named();
  o.cluster = [c] { return c; };
  const Scrape text(Metrics(o).render());

  const std::map<std::string, double> members = {
      {"alive", 3}, {"suspect", 1}, {"dead", 2}, {"left", 4}};
  for (const auto& [state, v] : members) {
    CHECK(text.value("throttlex_members", {{"state", state}}) == v);
  }
  CHECK(text.value("throttlex_gossip_packets_total", {{"direction", "sent"}}) == 100);
  CHECK(text.value("throttlex_gossip_packets_total", {{"direction", "received"}}) == 90);
  const std::map<std::string, double> dropped = {
      {"malformed", 5}, {"foreign_cluster", 6}, {"version", 7}, {"misdirected", 8}};
  for (const auto& [reason, v] : dropped) {
    CHECK(text.value("throttlex_gossip_dropped_total", {{"reason", reason}}) == v);
  }
  CHECK(text.value("throttlex_gossip_send_failures_total") == 11);
}

TEST_CASE("without providers, no store, cluster, forwarding or persistence family is rendered") {
  const std::string rendered = Metrics(named()).render();
  for (const char* absent :
       {"throttlex_forward_", "throttlex_breaker_", "throttlex_degraded_", "throttlex_members",
        "throttlex_gossip_", "throttlex_keys", "throttlex_evictions_", "throttlex_redis_",
        "throttlex_snapshot_", "throttlex_slots_", "throttlex_parked_", "throttlex_handoff"}) {
    CAPTURE(absent);
    CHECK(rendered.find(absent) == std::string::npos);
  }
  const Scrape text(rendered);                                   // what is always there still is
  CHECK(text.samples("throttlex_requests_total").size() == 36);  // 3 APIs x 3 routes x 4
  CHECK(text.value("throttlex_build_info", {{"node_id", "node-7"}, {"version", "9.9.9"}}) == 1);
}

TEST_CASE(
    "every slot stat is rendered with its own value, and the snapshot families only with a store") {
  PersistenceStats p;  // has_store false: slots only (a node without --redis still hands off)
  std::uint64_t next = 1;
#define TEST_SLOT_SET(field, ...) p.slots.field = next++;
  THROTTLEX_SLOT_STATS(TEST_SLOT_SET)
#undef TEST_SLOT_SET
  Metrics::Options o = named();
  o.persistence = [&p] { return p; };
  const std::string rendered = Metrics(o).render();
  const Scrape text(rendered);
  std::uint64_t expected = 1;
  std::size_t rows = 0;
#define TEST_SLOT_CHECK(field, name, kind, help, label, label_value)                     \
  {                                                                                      \
    CAPTURE(#field);                                                                     \
    Labels labels;                                                                       \
    if (*(label) != '\0') labels[label] = label_value;                                   \
    CHECK(text.value(name, labels) == static_cast<double>(expected++));                  \
    CHECK(rendered.find(std::string("# TYPE ") + (name) +                                \
                        (StatKind::kind == StatKind::kGauge ? " gauge" : " counter")) != \
          std::string::npos);                                                            \
    ++rows;                                                                              \
  }
  THROTTLEX_SLOT_STATS(TEST_SLOT_CHECK)
#undef TEST_SLOT_CHECK
  CHECK(rows == 15);
  CHECK(rendered.find("throttlex_snapshot_") == std::string::npos);
  CHECK(rendered.find("throttlex_redis_") == std::string::npos);
}

TEST_CASE("a shed check counts as shed, by reason and priority, and not as its rule's decision") {
  Metrics m(named());
  CheckOutcome shed;
  shed.policy = "api";
  shed.allowed = true;
  shed.decision.allowed = true;
  shed.shed = ShedReason::kOverload;
  shed.priority = Priority::kSheddable;
  CheckOutcome decided = shed;
  decided.shed.reset();
  for (int i = 0; i < 3; ++i) m.recordCheck(Api::kHttp, shed, 0ns);
  m.recordCheck(Api::kRpc, decided, 0ns);
  shed.shed = ShedReason::kDeadline;
  shed.priority = Priority::kCritical;
  m.recordCheck(Api::kRpc, shed, 0ns);
  const Scrape text(m.render());
  CHECK(text.value("throttlex_shed_total", {{"reason", "overload"}, {"priority", "sheddable"}}) ==
        3);
  CHECK(text.value("throttlex_shed_total", {{"reason", "deadline"}, {"priority", "critical"}}) ==
        1);
  CHECK(text.value("throttlex_shed_total", {{"reason", "overload"}, {"priority", "normal"}}) == 0);
  CHECK(text.samples("throttlex_shed_total").size() == 6);
  CHECK(text.value("throttlex_requests_total",
                   {{"api", "http"}, {"route", "local"}, {"decision", "shed"}}) == 3);
  // Only the decided check counts for its rule.
  CHECK(text.value("throttlex_rule_checks_total", {{"rule", "api"}, {"decision", "allowed"}}) == 1);
}

TEST_CASE("the busiest worker loop's standing lag and shed share are shown, the latest of each") {
  Metrics m(named());
  {
    const Scrape idle(m.render());
    CHECK(idle.value("throttlex_loop_lag_seconds", {}) == 0);
    CHECK(idle.value("throttlex_shed_share", {}) == 0);
  }
  // Two loops: one keeps up, one sheds a quarter of its normal checks behind a 12 ms queue.
  std::thread calm([&] { m.recordLoop(2ms, 0); });
  calm.join();
  std::thread busy([&] {
    m.recordLoop(40ms, 0.9);
    m.recordLoop(12ms, 0.25);  // only the latest probe counts
  });
  busy.join();
  const Scrape text(m.render());
  CHECK(text.value("throttlex_loop_lag_seconds", {}) == doctest::Approx(0.012));
  CHECK(text.value("throttlex_shed_share", {}) == doctest::Approx(0.25));
}

TEST_CASE("with a store, its live keys are rendered") {
  ManualClock clock;
  auto store = Store::make({100'000, 16}).value();
  LimiterService service(*store, clock, RuleSet::make({}).value(), "");
  for (const char* key : {"k1", "k2", "k3", "k2"}) {
    CheckArgs a;
    a.key = key;
    a.limit = {Algorithm::kTokenBucket, 10, 1h, 0};
    REQUIRE(service.check(a).ok());
  }
  Metrics::Options o = named();
  o.store = store.get();
  const Scrape text(Metrics(o).render());
  CHECK(text.value("throttlex_keys") == 3);
  CHECK(text.value("throttlex_evictions_total") == 0);
}

namespace {

// A listening TCP socket on 127.0.0.1: a port that is taken.
class Listener {
 public:
  Listener() : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd_, 4) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() { ::close(fd_); }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  std::uint16_t port() const { return port_; }

 private:
  int fd_;
  std::uint16_t port_ = 0;
};

// A connection to 127.0.0.1:port that sends nothing, open for its scope.
class IdleConnection {
 public:
  explicit IdleConnection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  }
  ~IdleConnection() { ::close(fd_); }
  IdleConnection(const IdleConnection&) = delete;
  IdleConnection& operator=(const IdleConnection&) = delete;

 private:
  int fd_;
};

// GET /metrics from 127.0.0.1:port over HTTP/1.0; the whole response (reads bounded by 10 s).
std::string get(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  timeval bound{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0)
        response.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return response;
}

}  // namespace

TEST_CASE("serve on port 0 binds a free port and serves the scrape; a taken port is an error") {
  SystemClock clock;
  Metrics m(named());
  m.recordRequest(Api::kHttp, RouteKind::kForwarded, Outcome::kLimited, 1ms);
  const Result<int> port = m.serve("127.0.0.1", 0, clock);
  REQUIRE(port.ok());
  CHECK(*port > 0);
  const std::string response = get(*port);
  CHECK(response.rfind("HTTP/1.", 0) == 0);
  CHECK(response.find(" 200 ") != std::string::npos);
  const std::size_t body = response.find("\r\n\r\n");
  REQUIRE(body != std::string::npos);
  CHECK(Scrape(response.substr(body + 4))
            .value("throttlex_requests_total",
                   {{"api", "http"}, {"route", "forwarded"}, {"decision", "limited"}}) == 1);

  Listener taken;
  Metrics other(named());
  const Result<int> refused = other.serve("127.0.0.1", taken.port(), clock);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::kUnavailable);
  CHECK(refused.error().message.find("127.0.0.1:" + std::to_string(taken.port())) !=
        std::string::npos);
  // Idle connections (opened, nothing sent) do not block the scrape: 50 of them held up a
  // thread-per-connection server (8 threads, each freed after 2 s) past get()'s 10 s bound.
  std::vector<std::unique_ptr<IdleConnection>> idle;
  for (int i = 0; i < 50; ++i) idle.push_back(std::make_unique<IdleConnection>(*port));
  CHECK(get(*port).find(" 200 ") != std::string::npos);
  // The port the first one holds is taken too.
  const Result<int> again =
      Metrics(named()).serve("127.0.0.1", static_cast<std::uint16_t>(*port), clock);
  CHECK_FALSE(again.ok());
}

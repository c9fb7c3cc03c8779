// The client library against in-process nodes (Store + LimiterService + RpcServer on port 0), and
// against a black hole (a TCP listener that never answers) for deadlines and failover.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <capnp/ez-rpc.h>

#include "client/src/throttle.h"
#include "daemon/rpc/rpc_server.h"
#include "daemon/service/limiter_service.h"
#include "limiter/clock.h"
#include "proto/throttlex.capnp.h"
#include "throttlex/client.h"

namespace tc = throttlex::client;
using namespace std::chrono_literals;
// Real time (these tests run real sockets and threads), read through the clock adapter.
struct SteadyClock {
  static throttlex::Instant now() {
    static const throttlex::SystemClock real;
    return real.monotonic();
  }
};

namespace {

struct Node {
  throttlex::ManualClock clock{throttlex::Time(std::chrono::seconds(1'700'000'000))};
  std::unique_ptr<throttlex::Store> store = throttlex::Store::make({100'000, 64}).value();
  std::unique_ptr<throttlex::LimiterService> service = std::make_unique<throttlex::LimiterService>(
      *store, clock, throttlex::RuleSet::make({}).value(), "");
  std::unique_ptr<throttlex::RpcServer> server;

  Node() {
    throttlex::RpcServerOptions options;
    options.bind_address = "127.0.0.1";
    options.port = 0;
    auto started = throttlex::RpcServer::start(options, *service, {}, nullptr);
    REQUIRE(started.ok());
    server = std::move(*started);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(server->port()); }
};

// A TCP listener that never accepts: the kernel completes the handshake, nobody ever answers.
struct BlackHole {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  std::uint16_t port = 0;
  BlackHole() {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(fd, 64) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port = ntohs(a.sin_port);
  }
  ~BlackHole() { ::close(fd); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

// A node that allows every check and notes the budget (deadlineMs) each one carried, or, while
// shedding, answers every check shed by an `overload: allow` policy as an overloaded node does
// (compactly, when the client asks for compactShed); its own thread runs its event loop until the
// node is destroyed, which says so through a socket pair (a hand-off ThreadSanitizer sees, unlike
// KJ's cross-thread executor).
class BudgetNode {
 public:
  BudgetNode() {
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, stop_) == 0);
    std::promise<std::uint16_t> port;
    auto ready = port.get_future();
    thread_ = std::thread([this, &port] { run(port); });
    port_ = ready.get();
  }
  ~BudgetNode() {
    const char byte = 0;
    CHECK(::write(stop_[0], &byte, 1) == 1);
    thread_.join();
    ::close(stop_[0]);
  }
  BudgetNode(const BudgetNode&) = delete;
  BudgetNode& operator=(const BudgetNode&) = delete;

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::vector<std::uint32_t> budgets() const {
    std::lock_guard lock(mu_);
    return budgets_;
  }
  std::size_t received() const {
    std::lock_guard lock(mu_);
    return budgets_.size();
  }
  void setShedding(bool shedding, bool bad_index = false) {
    std::lock_guard lock(mu_);
    shedding_ = shedding;
    bad_index_ = bad_index;
  }

 private:
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"  // KJ's interface; never deleted through it
  class Server final : public throttlex::proto::Node::Server {
   public:
    explicit Server(BudgetNode& node) : node_(node) {}
    kj::Promise<void> checkBatch(CheckBatchContext context) override {
      const auto params = context.getParams();
      const auto checks = params.getChecks();
      auto results = context.getResults();
      results.setVersion(throttlex::proto::PROTOCOL_VERSION);
      std::lock_guard lock(node_.mu_);
      for (const auto check : checks) node_.budgets_.push_back(check.getDeadlineMs());
      if (node_.shedding_ && params.getCompactShed()) {
        answerCompactly(checks, results);
        return kj::READY_NOW;
      }
      auto out = results.initResults(checks.size());
      for (unsigned i = 0; i < checks.size(); ++i) fill(out[i], checks[i].getRule());
      return kj::READY_NOW;
    }

   private:
    void fill(throttlex::proto::CheckResult::Builder out, capnp::Text::Reader rule) const {
      out.setAllowed(true);
      out.setDecidedAllowed(!node_.shedding_);
      out.setLimit(100);
      if (node_.shedding_) {
        out.setPolicy(rule);
        out.setPeriodMs(1000);
        out.setShed(throttlex::proto::ShedReason::OVERLOAD);
      }
    }
    // As a node answers a batch it shed whole to a client that asked for compactShed: one answer
    // per rule, an index per check (pointing past the answers when told to answer badly).
    void answerCompactly(capnp::List<throttlex::proto::CheckRequest>::Reader checks,
                         CheckBatchResults::Builder results) const {
      std::vector<std::string> rules;
      std::vector<kj::byte> index;
      for (const auto check : checks) {
        const std::string rule = check.getRule();
        auto at = std::find(rules.begin(), rules.end(), rule);
        if (at == rules.end()) at = rules.insert(rules.end(), rule);
        index.push_back(static_cast<kj::byte>(at - rules.begin() + (node_.bad_index_ ? 100 : 0)));
      }
      auto answers = results.initShedAnswers(static_cast<unsigned>(rules.size()));
      for (unsigned k = 0; k < rules.size(); ++k) fill(answers[k], rules[k]);
      results.setShedIndex(kj::arrayPtr(index.data(), index.size()));
    }

    BudgetNode& node_;
  };
#pragma GCC diagnostic pop

  void run(std::promise<std::uint16_t>& port) {
    capnp::EzRpcServer server(kj::heap<Server>(*this), "127.0.0.1", 0);
    auto& wait = server.getWaitScope();
    auto stop = server.getLowLevelIoProvider().wrapSocketFd(
        stop_[1], kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
    port.set_value(static_cast<std::uint16_t>(server.getPort().wait(wait)));
    kj::byte byte = 0;
    stop->read(&byte, 1).wait(wait);
  }

  std::thread thread_;
  std::uint16_t port_ = 0;
  int stop_[2] = {-1, -1};  // [0]: the destructor writes; [1]: the loop reads (and closes)
  mutable std::mutex mu_;
  std::vector<std::uint32_t> budgets_;
  bool shedding_ = false;
  bool bad_index_ = false;
};

// A loopback port nothing listens on (bound, then closed again).
std::string deadAddress() {
  BlackHole b;
  return b.address();
}

tc::CheckSpec spec(std::string key, std::uint64_t limit = 100,
                   std::chrono::milliseconds period = 60s) {
  tc::CheckSpec s;
  s.key = std::move(key);
  s.limit = limit;
  s.period = period;
  return s;
}

std::unique_ptr<tc::Client> connect(tc::ClientOptions options) {
  auto client = tc::Client::connect(std::move(options));
  REQUIRE_MESSAGE(client.ok(), (client.ok() ? "" : client.error().message));
  return std::move(*client);
}

std::unique_ptr<tc::Client> connect(std::vector<std::string> nodes) {
  tc::ClientOptions options;
  options.nodes = std::move(nodes);
  options.deadline = 5s;  // generous: sanitizer builds are slow; deadlines have their own tests
  return connect(std::move(options));
}

// A client of `node` alone that connects on its first call (the fake node has no nodeInfo).
std::unique_ptr<tc::Client> connectLazily(const BudgetNode& node) {
  tc::ClientOptions o;
  o.nodes = {node.address()};
  o.lazy_connect = true;
  o.deadline = 5s;
  return connect(std::move(o));
}

tc::CheckSpec ruleSpec(std::string rule, std::string key) {
  tc::CheckSpec s;
  s.rule = std::move(rule);
  s.key = std::move(key);
  return s;
}

}  // namespace

TEST_CASE("connect refuses bad options") {
  tc::ClientOptions o;
  CHECK(tc::Client::connect(o).error().code == tc::ErrorCode::kInvalidArgument);  // no nodes
  for (const char* bad : {"localhost", "h:0", "h:70000", ":80", "h:", "h:8x", "[::1:80"}) {
    o.nodes = {bad};
    CHECK_MESSAGE(tc::Client::connect(o).error().code == tc::ErrorCode::kInvalidArgument, bad);
  }
  o.nodes = {"127.0.0.1:7400"};
  o.max_batch = 0;
  CHECK(tc::Client::connect(o).error().code == tc::ErrorCode::kInvalidArgument);
  o.max_batch = 1001;
  CHECK(tc::Client::connect(o).error().code == tc::ErrorCode::kInvalidArgument);
  o.max_batch = 10;
  o.deadline = 0ms;
  CHECK(tc::Client::connect(o).error().code == tc::ErrorCode::kInvalidArgument);
  o.deadline = 200ms;
  for (double bad : {0.5, -1.0, std::nan(""), 2e6}) {
    o.overload_throttle = bad;
    CHECK_MESSAGE(tc::Client::connect(o).error().code == tc::ErrorCode::kInvalidArgument, bad);
  }
}

TEST_CASE("adaptive throttling: the share a client answers itself, over the last second") {
  using tc::detail::AdaptiveThrottle;
  constexpr std::int64_t kMs = 1'000'000;
  const std::int64_t t0 = 5'000 * kMs;
  AdaptiveThrottle all_decided;
  for (int i = 0; i < 100; ++i) all_decided.request(t0 + i * kMs);
  all_decided.accept(t0 + 100 * kMs, 100);
  CHECK(all_decided.rejectShare(t0 + 100 * kMs, 2.0) == 0);

  AdaptiveThrottle all_shed;  // (requests - K * accepts) / (requests + 1)
  for (int i = 0; i < 100; ++i) all_shed.request(t0 + i * kMs);
  CHECK(all_shed.rejectShare(t0 + 100 * kMs, 2.0) == doctest::Approx(100.0 / 101));
  all_shed.accept(t0 + 100 * kMs, 40);
  CHECK(all_shed.rejectShare(t0 + 100 * kMs, 2.0) == doctest::Approx(20.0 / 101));
  CHECK(all_shed.rejectShare(t0 + 100 * kMs, 1.0) == doctest::Approx(60.0 / 101));
  CHECK(all_shed.rejectShare(t0 + 100 * kMs, 3.0) == 0);
  // Counts are kept per 100 ms and forgotten a second later: the requests (t0 .. t0 + 99 ms) go
  // at t0 + 1 s, the accepts (t0 + 100 ms) 100 ms after them.
  CHECK(all_shed.rejectShare(t0 + 950 * kMs, 1.0) == doctest::Approx(60.0 / 101));
  CHECK(all_shed.rejectShare(t0 + 1'000 * kMs, 1.0) == 0);
  CHECK(all_shed.rejectShare(t0 + 1'100 * kMs, 1.0) == 0);
  all_shed.request(t0 + 3'000 * kMs);
  CHECK(all_shed.rejectShare(t0 + 3'000 * kMs, 2.0) == doctest::Approx(0.5));
}

TEST_CASE("adaptive throttling: while a node sheds, the client answers most checks itself") {
  BudgetNode node;
  node.setShedding(true);
  auto client = connectLazily(node);
  const tc::CheckSpec s = ruleSpec("search", "k");
  std::size_t local = 0;
  constexpr std::size_t kChecks = 300;
  for (std::size_t i = 0; i < kChecks; ++i) {
    const tc::CheckResult r = client->check(s);
    REQUIRE(r.ok());
    // Answered here or by the node, a shed answer reads the same: the node's.
    CHECK(r.shed == tc::ShedReason::kOverload);
    CHECK(r.allowed);
    CHECK(r.limit == 100);
    CHECK(r.policy == "search");
    CHECK(r.period == 1s);
    if (r.shed_locally) ++local;
  }
  CHECK(local + node.received() == kChecks);
  CHECK(local >= kChecks / 2);  // ~290 expected: the node decides none of what it gets
  CHECK(client->stats().checks_shed_locally == local);

  // Critical checks, releases and inline limits always go to the node.
  const std::size_t before = node.received();
  tc::CheckSpec critical = s;
  critical.priority = tc::CheckSpec::Priority::kCritical;
  tc::CheckSpec release = s;
  release.release = 7;
  for (int i = 0; i < 20; ++i) {
    CHECK_FALSE(client->check(critical).shed_locally);
    CHECK_FALSE(client->check(release).shed_locally);
    CHECK_FALSE(client->check(spec("k")).shed_locally);
  }
  CHECK(node.received() == before + 60);

  // Once the node decides again, the client sends everything again (within about a second, as
  // its counts age): bounded in checks and in time.
  node.setShedding(false);
  std::size_t sent_in_a_row = 0;
  const auto give_up = SteadyClock::now() + 10s;
  for (int i = 0; i < 200'000 && sent_in_a_row < 50 && SteadyClock::now() < give_up; ++i) {
    const tc::CheckResult r = client->check(s);
    sent_in_a_row = r.shed_locally ? 0 : sent_in_a_row + 1;
  }
  CHECK(sent_in_a_row == 50);
}

TEST_CASE("a shed answer that does not match its batch fails those checks, not the client") {
  BudgetNode node;
  node.setShedding(true, /*bad_index=*/true);
  auto client = connectLazily(node);
  const tc::CheckSpec s = ruleSpec("search", "k");
  const tc::CheckResult bad = client->check(s);
  CHECK(bad.error.code == tc::ErrorCode::kInternal);
  CHECK(bad.error.message.find("does not match") != std::string::npos);
  node.setShedding(false);
  const tc::CheckResult good = client->check(s);
  REQUIRE(good.ok());
  CHECK(good.shed == tc::ShedReason::kNone);
}

TEST_CASE("connect fails fast and clearly when no node is reachable") {
  tc::ClientOptions o;
  o.nodes = {deadAddress(), deadAddress()};
  const auto start = SteadyClock::now();
  auto client = tc::Client::connect(o);
  REQUIRE_FALSE(client.ok());
  CHECK(client.error().code == tc::ErrorCode::kUnavailable);
  CHECK(client.error().message.find("no ThrottleX node reachable") != std::string::npos);
  CHECK(SteadyClock::now() - start < 2s);
}

TEST_CASE("a check round trip") {
  Node n;
  auto client = connect({n.address()});
  const tc::CheckResult r = client->check(spec("user:1", 10));
  REQUIRE(r.ok());
  CHECK(r.allowed);
  CHECK(r.decided_allowed);
  CHECK_FALSE(r.fallback);
  CHECK_FALSE(r.shadow);
  CHECK(r.limit == 10);
  CHECK(r.remaining == 9);
  CHECK(r.retry_after == 0ns);
  CHECK(r.period == 60s);
  CHECK(r.policy == "default");

  tc::CheckSpec never = spec("user:2", 10);
  never.hits = 11;  // more than the bucket holds: never admitted
  const tc::CheckResult nr = client->check(never);
  REQUIRE(nr.ok());
  CHECK_FALSE(nr.allowed);
  CHECK(nr.retry_after < 0ns);
}

TEST_CASE("a refund gives units back through the client, capped at the limit") {
  Node n;
  auto client = connect({n.address()});
  tc::CheckSpec s = spec("refund", 10);
  s.hits = 10;
  CHECK(client->check(s).allowed);
  s.hits = 1;
  CHECK_FALSE(client->check(s).allowed);
  s.refund = true;
  s.hits = 4;
  tc::CheckResult r = client->check(s);
  REQUIRE(r.ok());
  CHECK(r.allowed);
  CHECK(r.remaining == 4);
  s.hits = 100;
  r = client->check(s);
  REQUIRE(r.ok());
  CHECK(r.remaining == 10);
  s.hits = std::uint64_t{1} << 41;  // over the most one check may carry, refund or not
  CHECK(client->check(s).error.code == tc::ErrorCode::kInvalidArgument);
}

TEST_CASE("checkAtomic: all or nothing, the denier named and the rest given back") {
  Node n;
  auto client = connect({n.address()});
  const std::vector<tc::CheckSpec> batch = {spec("atomic:global", 3), spec("atomic:user", 2)};
  for (int i = 0; i < 2; ++i) {
    auto r = client->checkAtomic(batch);
    REQUIRE(r.ok());
    CHECK(r->allowed);
  }
  auto denied = client->checkAtomic(batch);
  REQUIRE(denied.ok());
  CHECK_FALSE(denied->allowed);
  REQUIRE(denied->denied_by.has_value());
  CHECK(*denied->denied_by == 1);
  REQUIRE(denied->results.size() == 2);
  CHECK(denied->results[0].refunded);
  CHECK_FALSE(denied->results[0].allowed);
  CHECK(denied->results[0].remaining == 1);  // the global unit came back
  tc::CheckSpec peek = spec("atomic:global", 3);
  peek.hits = 0;
  CHECK(client->check(peek).remaining == 1);
  tc::CheckSpec bad = spec("atomic:x", 1);
  bad.period = std::chrono::milliseconds(0);  // an invalid limit: that check fails
  auto refused = client->checkAtomic({spec("atomic:y", 1), bad});
  REQUIRE(refused.ok());
  CHECK_FALSE(refused->allowed);
  CHECK(refused->denied_by == std::optional<std::size_t>(1));
  CHECK(refused->results[1].error.code == tc::ErrorCode::kInvalidArgument);
  CHECK(refused->results[0].refunded);
  CHECK(client->check(spec("atomic:y", 1)).allowed);  // its unit was given back
}

TEST_CASE("exactly the limit is admitted: 150 checks against 100 per minute") {
  Node n;
  auto client = connect({n.address()});
  int allowed = 0;
  for (int i = 0; i < 150; ++i) {
    const tc::CheckResult r = client->check(spec("exact"));
    REQUIRE(r.ok());
    allowed += r.allowed ? 1 : 0;
  }
  CHECK(allowed == 100);
}

TEST_CASE("checkBatch keeps request order and reports errors per element") {
  Node n;
  auto client = connect({n.address()});
  std::vector<tc::CheckSpec> specs = {spec("a", 5), spec("", 5), spec("b", 7),
                                      spec(std::string(2000, 'k'), 5),
                                      spec("c", (std::uint64_t{1} << 40) + 1)};
  tc::CheckSpec by_rule;
  by_rule.key = "d";
  by_rule.rule = "no-such-rule";
  specs.push_back(by_rule);
  const auto results = client->checkBatch(specs);
  REQUIRE(results.size() == 6);
  CHECK(results[0].ok());
  CHECK(results[0].remaining == 4);
  CHECK(results[1].error.code == tc::ErrorCode::kInvalidArgument);
  CHECK(results[2].ok());
  CHECK(results[2].remaining == 6);
  CHECK(results[3].error.code == tc::ErrorCode::kInvalidArgument);  // refused by the client
  CHECK(results[4].error.code == tc::ErrorCode::kInvalidArgument);
  CHECK(results[5].error.code == tc::ErrorCode::kNotFound);
  CHECK(client->checkBatch({}).empty());
}

TEST_CASE("large batches are split at max_batch") {
  Node n;
  tc::ClientOptions o;
  o.nodes = {n.address()};
  o.deadline = 5s;
  o.max_batch = 10;
  auto client = connect(o);
  std::vector<tc::CheckSpec> specs;
  for (int i = 0; i < 95; ++i) specs.push_back(spec("k" + std::to_string(i), 1));
  const auto results = client->checkBatch(specs);
  REQUIRE(results.size() == 95);
  for (const auto& r : results) CHECK((r.ok() && r.allowed));
  CHECK(client->stats().calls >= 10);
  CHECK(client->stats().checks == 95);
}

TEST_CASE("a node that never answers: the check returns at its deadline as on_unavailable says") {
  BlackHole hole;
  tc::ClientOptions o;
  o.nodes = {hole.address()};
  o.lazy_connect = true;
  o.deadline = 100ms;

  auto timed = [](tc::Client& c) {
    const auto start = SteadyClock::now();
    tc::CheckResult r = c.check(spec("k"));
    const auto took = SteadyClock::now() - start;
    CHECK(took >= 80ms);       // it waited for the node (a timer turn's slack below 100 ms)
    CHECK(took < 100ms + 1s);  // the margin is for slow sanitizer builds
    return r;
  };
  {
    o.on_unavailable = tc::OnUnavailable::kFailOpen;
    auto client = connect(o);
    const tc::CheckResult r = timed(*client);
    CHECK(r.ok());
    CHECK(r.fallback);
    CHECK(r.allowed);
    CHECK(client->stats().fallbacks == 1);
  }
  {
    o.on_unavailable = tc::OnUnavailable::kFailClosed;
    auto client = connect(o);
    const tc::CheckResult r = timed(*client);
    CHECK(r.ok());
    CHECK(r.fallback);
    CHECK_FALSE(r.allowed);
  }
  {
    o.on_unavailable = tc::OnUnavailable::kReturnError;
    auto client = connect(o);
    const tc::CheckResult r = timed(*client);
    CHECK_FALSE(r.fallback);
    CHECK((r.error.code == tc::ErrorCode::kDeadlineExceeded ||
           r.error.code == tc::ErrorCode::kUnavailable));
    // Admin calls have deadlines too.
    const auto info = client->nodeInfo(100ms);
    REQUIRE_FALSE(info.ok());
    CHECK((info.error().code == tc::ErrorCode::kDeadlineExceeded ||
           info.error().code == tc::ErrorCode::kUnavailable));
  }
  {
    // connect() itself gives up on a black hole.
    o.lazy_connect = false;
    o.connect_timeout = 100ms;
    o.admin_deadline = 100ms;
    const auto start = SteadyClock::now();
    auto client = tc::Client::connect(o);
    REQUIRE_FALSE(client.ok());
    CHECK(client.error().code == tc::ErrorCode::kUnavailable);
    CHECK(SteadyClock::now() - start < 2s);
  }
}

TEST_CASE("failover: checks continue on the next node when the first stops") {
  Node a;
  Node b;
  auto client = connect({a.address(), b.address()});
  for (int i = 0; i < 20; ++i) {
    const auto r = client->check(spec("k" + std::to_string(i)));
    CHECK((r.ok() && !r.fallback && r.allowed));
  }
  CHECK(a.server->stats().checks == 20);
  CHECK(b.server->stats().checks == 0);

  a.server->stop();
  for (int i = 0; i < 20; ++i) {
    const auto r = client->check(spec("k" + std::to_string(i)));
    CHECK((r.ok() && !r.fallback && r.allowed));
  }
  CHECK(b.server->stats().checks == 20);
  CHECK(client->stats().fallbacks == 0);
}

TEST_CASE("failover within one deadline: a silent first node costs half the deadline, not all") {
  BlackHole hole;
  Node b;
  tc::ClientOptions o;
  o.nodes = {hole.address(), b.address()};
  o.lazy_connect = true;
  o.deadline = 1s;
  auto client = connect(o);
  const auto first_start = SteadyClock::now();
  const auto r = client->check(spec("k"));
  // It gave the silent node about half of the deadline, then b answered within the rest.
  CHECK(SteadyClock::now() - first_start >= 400ms);
  CHECK(r.ok());
  CHECK_FALSE(r.fallback);
  CHECK(b.server->stats().checks == 1);
  CHECK(client->stats().failovers >= 1);
  // The silent node is now marked down: the next check goes straight to b.
  const auto start = SteadyClock::now();
  CHECK_FALSE(client->check(spec("k")).fallback);
  CHECK(SteadyClock::now() - start < 400ms);
}

TEST_CASE("each check tells the node how long the client waits for it (deadlineMs)") {
  BudgetNode node;
  tc::ClientOptions o;
  o.nodes = {node.address()};
  o.lazy_connect = true;
  o.deadline = 1s;
  {
    auto client = connect(o);
    REQUIRE(client->check(spec("k")).ok());
    REQUIRE(client->check(spec("k"), 40ms).ok());
  }
  // Alone, the node gets the whole budget: at most the deadline, more than half of it.
  std::vector<std::uint32_t> budgets = node.budgets();
  REQUIRE(budgets.size() == 2);
  CHECK(budgets[0] <= 1000);
  CHECK(budgets[0] > 500);
  CHECK(budgets[1] <= 40);
  CHECK(budgets[1] >= 1);

  // With another node to fail over to, an attempt has half of it at most.
  BlackHole spare;
  o.nodes = {node.address(), spare.address()};
  {
    auto client = connect(o);
    REQUIRE(client->check(spec("k")).ok());
  }
  budgets = node.budgets();
  REQUIRE(budgets.size() == 3);
  CHECK(budgets[2] <= 500);
  CHECK(budgets[2] >= 1);
}

TEST_CASE("adaptive batching: concurrent checks are exact and need fewer calls than checks") {
  Node n;
  auto client = connect({n.address()});
  constexpr int kThreads = 8;
  constexpr int kPerThread = 250;
  constexpr int kTotal = kThreads * kPerThread;
  std::atomic<int> allowed{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::future<tc::CheckResult>> futures;
      for (int i = 0; i < kPerThread; ++i) {
        if ((t + i) % 2 == 0) {
          futures.push_back(client->checkAsync(spec("hot", 1000)));
        } else {
          auto p = std::make_shared<std::promise<tc::CheckResult>>();
          futures.push_back(p->get_future());
          client->checkAsync(spec("hot", 1000),
                             [p](tc::CheckResult r) { p->set_value(std::move(r)); });
        }
      }
      for (auto& f : futures) {
        if (f.wait_for(30s) != std::future_status::ready) {
          failed.fetch_add(1);
          continue;
        }
        const tc::CheckResult r = f.get();
        if (!r.ok() || r.fallback) failed.fetch_add(1);
        if (r.allowed) allowed.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failed.load() == 0);
  CHECK(allowed.load() == 1000);
  const auto server = n.server->stats();
  CHECK(server.checks == kTotal);
  CHECK(server.calls < kTotal);
  CHECK(client->stats().calls == server.calls);
  MESSAGE("2000 checks took " << server.calls << " calls");
}

TEST_CASE("checks in flight when a node stops complete on the other node") {
  Node a;
  Node b;
  auto client = connect({a.address(), b.address()});
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      int i = 0;
      while (!stop.load() || i < 200) {
        std::vector<std::future<tc::CheckResult>> futures;
        for (int k = 0; k < 20; ++k, ++i) {
          futures.push_back(
              client->checkAsync(spec("t" + std::to_string(t) + ":" + std::to_string(i), 1)));
        }
        for (auto& f : futures) {
          if (f.wait_for(30s) != std::future_status::ready) {
            bad.fetch_add(1);
            continue;
          }
          const auto r = f.get();
          if (!r.ok() || r.fallback || !r.allowed) bad.fetch_add(1);
          done.fetch_add(1);
        }
      }
    });
  }
  // Stop a while checks are flowing: wait until some went through first (bounded).
  const auto give_up = SteadyClock::now() + 30s;
  while (done.load() < 200 && SteadyClock::now() < give_up) std::this_thread::yield();
  CHECK(done.load() >= 200);
  a.server->stop();
  stop.store(true);
  for (auto& t : threads) t.join();
  CHECK(bad.load() == 0);
  CHECK(b.server->stats().checks > 0);
}

TEST_CASE("admin calls round trip") {
  Node n;
  auto client = connect({n.address()});
  const auto info = client->nodeInfo();
  REQUIRE(info.ok());
  CHECK(info->protocol_version == 1);
  CHECK(info->version == throttlex::kVersion);

  tc::Rule rule;
  rule.name = "api";
  rule.algorithm = tc::Algorithm::kSlidingWindow;
  rule.limit = 2;
  rule.period = 1s;
  const auto made = client->setRule(rule);
  REQUIRE(made.ok());
  CHECK(made->version.counter == 1);  // the node's file (none) was version 0
  CHECK(client->nodeInfo()->rules_version == made->version);
  tc::Rule bad = rule;
  bad.name = "bad name!";
  CHECK(client->setRule(bad).error().code == tc::ErrorCode::kInvalidArgument);

  const auto rules = client->listRules();
  REQUIRE(rules.ok());
  REQUIRE(rules->size() == 1);
  CHECK((*rules)[0].name == "api");
  CHECK((*rules)[0].algorithm == tc::Algorithm::kSlidingWindow);
  CHECK((*rules)[0].limit == 2);
  CHECK((*rules)[0].period == 1s);

  tc::CheckSpec by_rule;
  by_rule.key = "u";
  by_rule.rule = "api";
  CHECK(client->check(by_rule).policy == "api");
  CHECK(client->check(by_rule).allowed);
  CHECK_FALSE(client->check(by_rule).allowed);

  const auto ins = client->inspect(by_rule);
  REQUIRE(ins.ok());
  CHECK(ins->found);
  CHECK(ins->algorithm == tc::Algorithm::kSlidingWindow);
  CHECK(ins->count == 2);
  CHECK(ins->remaining == 0);

  const auto reset = client->reset(by_rule);
  REQUIRE(reset.ok());
  CHECK(*reset);
  CHECK(client->check(by_rule).allowed);

  const auto deleted = client->deleteRule("api");
  REQUIRE(deleted.ok());
  CHECK(deleted->done);
  CHECK(deleted->version.counter == 2);
  const auto again = client->deleteRule("api");
  CHECK_FALSE(again->done);
  CHECK(again->version == deleted->version);  // nothing deleted, no new version
  CHECK(client->check(by_rule).error.code == tc::ErrorCode::kNotFound);
  CHECK(client->reloadRules().error().code == tc::ErrorCode::kNotFound);  // no rules file

  tc::CheckSpec both = by_rule;
  both.limit = 5;
  both.period = 1s;
  CHECK(client->check(both).error.code == tc::ErrorCode::kInvalidArgument);  // rule + inline
}

TEST_CASE("a synchronous call from a callback gets an error instead of a deadlock") {
  Node n;
  auto client = connect({n.address()});
  std::promise<tc::CheckResult> inner;
  client->checkAsync(spec("k"),
                     [&](tc::CheckResult) { inner.set_value(client->check(spec("k"))); });
  auto f = inner.get_future();
  REQUIRE(f.wait_for(30s) == std::future_status::ready);
  CHECK(f.get().error.code == tc::ErrorCode::kInvalidArgument);
}

TEST_CASE("destroying the client completes what is still pending") {
  BlackHole hole;
  tc::ClientOptions o;
  o.nodes = {hole.address()};
  o.lazy_connect = true;
  o.deadline = 60s;
  auto client = connect(o);
  std::vector<std::future<tc::CheckResult>> futures;
  for (int i = 0; i < 10; ++i) futures.push_back(client->checkAsync(spec("k")));
  const auto start = SteadyClock::now();
  client.reset();
  CHECK(SteadyClock::now() - start < 5s);
  for (auto& f : futures) {
    REQUIRE(f.wait_for(0s) == std::future_status::ready);
    const auto r = f.get();
    CHECK(r.fallback);
    CHECK(r.allowed);
  }
}

TEST_CASE("a batch to a node that never answers: every check completes once at the deadline") {
  BlackHole hole;
  tc::ClientOptions o;
  o.nodes = {hole.address()};
  o.lazy_connect = true;
  o.deadline = 100ms;
  o.on_unavailable = tc::OnUnavailable::kFailClosed;
  auto client = connect(o);
  std::vector<tc::CheckSpec> specs;
  for (int i = 0; i < 50; ++i) specs.push_back(spec("k" + std::to_string(i)));
  specs[7].key = std::string(tc::kMaxKeyBytes + 1, 'k');  // refused locally, at once
  const auto start = SteadyClock::now();
  const auto results = client->checkBatch(specs);
  const auto took = SteadyClock::now() - start;
  CHECK(took >= 80ms);       // it waited for the node (a timer turn's slack below 100 ms)
  CHECK(took < 100ms + 1s);  // the margin is for slow sanitizer builds
  REQUIRE(results.size() == 50);
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (i == 7) {
      CHECK(results[i].error.code == tc::ErrorCode::kInvalidArgument);
    } else {
      CHECK((results[i].ok() && results[i].fallback && !results[i].allowed));
    }
  }
  CHECK(client->stats().fallbacks == 49);
}

TEST_CASE("a callback that throws harms neither the client nor other callers") {
  Node n;
  auto client = connect({n.address()});
  std::promise<void> thrown;
  client->checkAsync(spec("k", 1000), [&](tc::CheckResult) {
    thrown.set_value();
    throw std::runtime_error("a careless callback");
  });
  REQUIRE(thrown.get_future().wait_for(30s) == std::future_status::ready);
  // The client still works, for async and sync callers alike.
  auto later = client->checkAsync(spec("k", 1000));
  REQUIRE(later.wait_for(30s) == std::future_status::ready);
  CHECK(later.get().ok());
  const tc::CheckResult r = client->check(spec("k", 1000));
  REQUIRE(r.ok());
  CHECK(r.remaining == 997);
  // An empty callback sends nothing and spends no quota.
  client->checkAsync(spec("k", 1000), tc::Client::Callback{});
  CHECK(client->check(spec("k", 1000)).remaining == 996);
}

TEST_CASE("a non-positive per-call deadline is refused and does not mark the node down") {
  Node n;
  auto client = connect({n.address()});
  const tc::CheckResult zero = client->check(spec("k"), 0ms);
  CHECK(zero.error.code == tc::ErrorCode::kInvalidArgument);
  CHECK_FALSE(zero.fallback);
  const tc::CheckResult ok = client->check(spec("k"));
  REQUIRE(ok.ok());
  CHECK_FALSE(ok.fallback);
  CHECK(client->stats().nodes_marked_down == 0);
}

TEST_CASE("a rule name too long for any node is refused locally") {
  Node n;
  auto client = connect({n.address()});
  tc::CheckSpec s;
  s.key = "k";
  s.rule = std::string(tc::kMaxRuleNameBytes + 1, 'r');
  CHECK(client->check(s).error.code == tc::ErrorCode::kInvalidArgument);
  CHECK(client->stats().calls == 1);  // only connect()'s nodeInfo reached the node
}

TEST_CASE("TLS options must name three readable PEM files, or none") {
  tc::ClientOptions options;
  options.nodes = {"127.0.0.1:1"};
  options.lazy_connect = true;
  options.tls_ca = "/nonexistent/ca.crt";
  auto partial = tc::Client::connect(options);
  REQUIRE_FALSE(partial);
  CHECK(partial.error().code == tc::ErrorCode::kInvalidArgument);
  CHECK(partial.error().message.find("all three") != std::string::npos);
  options.tls_cert = "/nonexistent/app.crt";
  options.tls_key = "/nonexistent/app.key";
  auto missing = tc::Client::connect(options);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == tc::ErrorCode::kInvalidArgument);
  CHECK(missing.error().message.find("/nonexistent/ca.crt") != std::string::npos);
}

TEST_CASE("reports: taken, refused all or nothing, timed by ScopedReport, shown by listRules") {
  Node node;
  throttlex::Rule backend;
  backend.name = "backend";
  backend.spec = {throttlex::Algorithm::kTokenBucket, 600, 1s, 0};
  throttlex::AdaptiveSpec a;
  a.max = 2000;
  a.latency_target = 100ms;
  backend.adaptive = a;
  REQUIRE(node.service->setRule(backend).ok());
  throttlex::Rule plain;
  plain.name = "plain";
  plain.spec = {throttlex::Algorithm::kTokenBucket, 5, 1s, 0};
  REQUIRE(node.service->setRule(plain).ok());
  throttlex::AdaptiveCell& cell = *node.service->currentRules()->find("backend")->cell;
  auto client = connect({node.address()});

  const std::vector<tc::Report> two = {{"backend", 20ms, tc::ReportOutcome::kOk},
                                       {"backend", std::nullopt, tc::ReportOutcome::kTimeout}};
  CHECK(client->report(two).value() == 2);
  CHECK(client->report({{"nope", 1ms, tc::ReportOutcome::kOk}}).error().code ==
        tc::ErrorCode::kNotFound);
  CHECK(client->report({{"plain", 1ms, tc::ReportOutcome::kOk}}).error().code ==
        tc::ErrorCode::kInvalidArgument);
  CHECK(client->report({{"backend", -1ms, tc::ReportOutcome::kOk}}).error().code ==
        tc::ErrorCode::kInvalidArgument);
  CHECK(client->report(std::vector<tc::Report>(1001, two[0])).error().code ==
        tc::ErrorCode::kInvalidArgument);
  throttlex::SignalDigest d = cell.take();
  CHECK(d.reports() == 2);
  CHECK(d.outcome(throttlex::ReportOutcome::kTimeout) == 1);

  // Scoped: ok when left normally, error when left by an exception. A synchronous report after
  // them answers after them (calls on one connection are delivered in order).
  { tc::ScopedReport timed(*client, "backend"); }
  try {
    tc::ScopedReport timed(*client, "backend");
    throw std::runtime_error("the call failed");
  } catch (const std::runtime_error&) {
  }
  {
    tc::ScopedReport timed(*client, "backend");
    timed.setOutcome(tc::ReportOutcome::kOverloaded);
  }
  client->reportAsync({{"nope", 1ms, tc::ReportOutcome::kOk}});
  CHECK(client->report({two[0]}).value() == 1);
  d = cell.take();
  CHECK(d.reports() == 4);
  CHECK(d.outcome(throttlex::ReportOutcome::kOk) == 2);
  CHECK(d.outcome(throttlex::ReportOutcome::kError) == 1);
  CHECK(d.outcome(throttlex::ReportOutcome::kOverloaded) == 1);
  CHECK(d.latencies() == 4);
  CHECK(client->stats().reports_failed == 1);

  const auto rules = client->listRules();
  REQUIRE(rules.ok());
  const auto it = std::find_if(rules->begin(), rules->end(),
                               [](const tc::Rule& r) { return r.name == "backend"; });
  REQUIRE(it != rules->end());
  REQUIRE(it->adaptive.has_value());
  CHECK(it->adaptive->limit == 600);
  CHECK(it->adaptive->max == 2000);
  CHECK(it->adaptive->latency_target == 100ms);
  CHECK(it->adaptive->law == "gradient");
  CHECK(it->adaptive->reason == "the rule's starting limit");
  const auto plain_it = std::find_if(rules->begin(), rules->end(),
                                     [](const tc::Rule& r) { return r.name == "plain"; });
  REQUIRE(plain_it != rules->end());
  CHECK_FALSE(plain_it->adaptive.has_value());
}

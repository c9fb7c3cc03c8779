// The RPC server over a real loopback socket, driven by a raw Cap'n Proto client (not the client
// library), so that it can send what a well-behaved client never would.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <capnp/ez-rpc.h>
#include <kj/async-io.h>

#include <string>
#include <vector>

#include "daemon/metrics/metrics.h"
#include "daemon/routing/router.h"
#include "daemon/rpc/rpc_server.h"
#include "daemon/rpc/rpc_service.h"
#include "daemon/service/limiter_service.h"
#include "proto/throttlex.capnp.h"

using namespace throttlex;
using namespace std::chrono_literals;

namespace {

struct Node {
  ManualClock clock{Time(std::chrono::seconds(1'700'000'000))};
  std::unique_ptr<Store> store = Store::make({100'000, 64}).value();
  std::unique_ptr<LimiterService> service =
      std::make_unique<LimiterService>(*store, clock, RuleSet::make({}).value(), "");
  Metrics metrics{Metrics::Options{"node-1", "0.1.0", store.get(), {}, {}, {}}};
  std::unique_ptr<RpcServer> server;

  explicit Node(RpcServerOptions options = {}, NodeInfoProvider info = {}) {
    options.bind_address = "127.0.0.1";
    options.port = 0;
    auto started = RpcServer::start(options, *service, std::move(info), &metrics);
    REQUIRE(started.ok());
    server = std::move(*started);
  }
};

// A raw client on this thread's own event loop.
struct Raw {
  capnp::EzRpcClient rpc;
  proto::Node::Client node;
  kj::WaitScope& ws;
  explicit Raw(std::uint16_t port)
      : rpc("127.0.0.1", port), node(rpc.getMain<proto::Node>()), ws(rpc.getWaitScope()) {}
};

void inlineLimit(proto::CheckRequest::Builder r, const char* key, std::uint64_t limit,
                 std::uint64_t period_ms = 60'000) {
  r.setKey(key);
  auto l = r.initLimit();
  l.setAlgorithm(proto::Algorithm::TOKEN_BUCKET);
  l.setLimit(limit);
  l.setPeriodMs(period_ms);
}

// One check call; returns the result's error code (NONE when decided).
proto::ErrorCode checkError(Raw& c, const std::function<void(proto::CheckRequest::Builder)>& fill,
                            std::uint16_t version = proto::PROTOCOL_VERSION) {
  auto req = c.node.checkRequest();
  req.setVersion(version);
  fill(req.initRequest());
  auto resp = req.send().wait(c.ws);
  return resp.getResult().getError().getCode();
}

}  // namespace

TEST_CASE("a check is decided and answered with the full result") {
  Node n;
  Raw c(n.server->port());
  auto req = c.node.checkRequest();
  req.setVersion(proto::PROTOCOL_VERSION);
  inlineLimit(req.initRequest(), "user:1", 10);
  auto resp = req.send().wait(c.ws);
  CHECK(resp.getVersion() == proto::PROTOCOL_VERSION);
  auto r = resp.getResult();
  CHECK(r.getError().getCode() == proto::ErrorCode::NONE);
  CHECK(r.getAllowed());
  CHECK(r.getDecidedAllowed());
  CHECK_FALSE(r.getShadow());
  CHECK(r.getLimit() == 10);
  CHECK(r.getRemaining() == 9);
  CHECK(r.getRetryAfterNs() == 0);
  CHECK(r.getResetAfterNs() > 0);
  CHECK(r.getPolicy() == "default");
  CHECK(r.getPeriodMs() == 60'000);
  CHECK(r.getRoute() == proto::Route::LOCAL);
  CHECK(n.metrics.render().find("rpc") != std::string::npos);
}

TEST_CASE("a started server is listening on every thread until it stops") {
  RpcServerOptions o;
  o.threads = 2;
  Node n(o);
  CHECK(n.server->listening());
  n.server->stop();
  CHECK_FALSE(n.server->listening());
}

TEST_CASE("exactly the limit is admitted: 150 checks against 100 per minute") {
  Node n;
  Raw c(n.server->port());
  int allowed = 0;
  for (int i = 0; i < 150; ++i) {
    auto req = c.node.checkRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    inlineLimit(req.initRequest(), "exact", 100);
    auto resp = req.send().wait(c.ws);  // the readers below point into it
    auto r = resp.getResult();
    REQUIRE(r.getError().getCode() == proto::ErrorCode::NONE);
    if (r.getAllowed()) ++allowed;
    if (!r.getAllowed()) CHECK(r.getRetryAfterNs() > 0);
  }
  CHECK(allowed == 100);
  CHECK(n.server->stats().checks == 150);
}

TEST_CASE("a batch answers in request order with errors per element") {
  Node n;
  Raw c(n.server->port());
  auto req = c.node.checkBatchRequest();
  req.setVersion(proto::PROTOCOL_VERSION);
  auto checks = req.initChecks(6);
  inlineLimit(checks[0], "a", 5);
  inlineLimit(checks[1], "", 5);  // empty key
  inlineLimit(checks[2], "b", 7);
  const std::string long_key(kMaxKeyBytes + 1, 'k');
  inlineLimit(checks[3], long_key.c_str(), 5);                // key too long
  inlineLimit(checks[4], "c", (std::uint64_t{1} << 40) + 1);  // limit too high
  checks[5].setKey("d");
  checks[5].setRule("no-such-rule");
  auto resp = req.send().wait(c.ws);
  CHECK(resp.getError().getCode() == proto::ErrorCode::NONE);
  auto results = resp.getResults();
  REQUIRE(results.size() == 6);
  CHECK(results[0].getError().getCode() == proto::ErrorCode::NONE);
  CHECK(results[0].getRemaining() == 4);
  CHECK(results[1].getError().getCode() == proto::ErrorCode::INVALID_ARGUMENT);
  CHECK(results[2].getError().getCode() == proto::ErrorCode::NONE);
  CHECK(results[2].getRemaining() == 6);
  CHECK(results[3].getError().getCode() == proto::ErrorCode::INVALID_ARGUMENT);
  CHECK(results[4].getError().getCode() == proto::ErrorCode::INVALID_ARGUMENT);
  CHECK(results[5].getError().getCode() == proto::ErrorCode::NOT_FOUND);
  CHECK(std::string(results[5].getError().getMessage().cStr()).find("no-such-rule") !=
        std::string::npos);
}

TEST_CASE("a peer's batch that comes up after its decide-by time is decided by nobody") {
  Node n;
  Raw c(n.server->port());
  const std::int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(n.clock.now().time_since_epoch())
          .count();
  const auto send = [&](std::uint8_t hops, std::int64_t decide_by) {
    auto req = c.node.checkBatchRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    req.setHops(hops);
    req.setDecideByMs(decide_by);
    inlineLimit(req.initChecks(1)[0], "late", 5);
    return req.send().wait(c.ws);
  };
  // Its sender may have had it decided elsewhere since: refused whole, nothing spent.
  auto late = send(1, now_ms - 1);
  CHECK(late.getError().getCode() == proto::ErrorCode::NOT_DECIDED);
  CHECK(late.getResults().size() == 0);
  CHECK(n.store->stats().entries == 0);
  // In time: decided.
  auto in_time = send(1, now_ms + 1);
  CHECK(in_time.getError().getCode() == proto::ErrorCode::NONE);
  REQUIRE(in_time.getResults().size() == 1);
  CHECK(in_time.getResults()[0].getRemaining() == 4);
  // The bound is the peers' contract: a client's batch (hops 0) is decided whatever it carries.
  auto client = send(0, now_ms - 1);
  CHECK(client.getError().getCode() == proto::ErrorCode::NONE);
  REQUIRE(client.getResults().size() == 1);
  CHECK(client.getResults()[0].getRemaining() == 3);
}

TEST_CASE("a batch above the maximum is refused as a whole") {
  Node n;
  Raw c(n.server->port());
  auto req = c.node.checkBatchRequest();
  req.setVersion(proto::PROTOCOL_VERSION);
  auto checks = req.initChecks(static_cast<unsigned>(kMaxBatchChecks + 1));
  for (auto ch : checks) inlineLimit(ch, "k", 5);
  auto resp = req.send().wait(c.ws);
  CHECK(resp.getError().getCode() == proto::ErrorCode::INVALID_ARGUMENT);
  CHECK(resp.getResults().size() == 0);
}

TEST_CASE("bad input gets an error value, never a crash") {
  Node n;
  Raw c(n.server->port());
  using B = proto::CheckRequest::Builder;
  CHECK(checkError(c, [](B r) { inlineLimit(r, "", 5); }) == proto::ErrorCode::INVALID_ARGUMENT);
  const std::string long_key(kMaxKeyBytes + 1, 'x');
  CHECK(checkError(c, [&](B r) { inlineLimit(r, long_key.c_str(), 5); }) ==
        proto::ErrorCode::INVALID_ARGUMENT);
  const std::string max_key(kMaxKeyBytes, 'x');
  CHECK(checkError(c, [&](B r) { inlineLimit(r, max_key.c_str(), 5); }) == proto::ErrorCode::NONE);
  CHECK(checkError(c, [](B r) { inlineLimit(r, "k", (std::uint64_t{1} << 40) + 1); }) ==
        proto::ErrorCode::INVALID_ARGUMENT);
  CHECK(checkError(c, [](B r) {
          inlineLimit(r, "k", 5);
          r.setHits((std::uint64_t{1} << 40) + 1);
        }) == proto::ErrorCode::INVALID_ARGUMENT);
  CHECK(checkError(c, [](B r) { inlineLimit(r, "k", 5, 0); }) ==
        proto::ErrorCode::INVALID_ARGUMENT);
  CHECK(checkError(c, [](B r) { inlineLimit(r, "k", 5, ~std::uint64_t{0}); }) ==
        proto::ErrorCode::INVALID_ARGUMENT);
  CHECK(checkError(c, [](B r) {
          inlineLimit(r, "k", 5);
          r.getLimit().setAlgorithm(static_cast<proto::Algorithm>(42));
        }) == proto::ErrorCode::INVALID_ARGUMENT);
  CHECK(checkError(c, [](B r) {
          r.setKey("k");
          r.setRule("nope");
        }) == proto::ErrorCode::NOT_FOUND);
  CHECK(checkError(c, [](B r) {
          inlineLimit(r, "k", 5);
          r.setRule("nope");
        }) == proto::ErrorCode::INVALID_ARGUMENT);  // a rule and an inline limit
  CHECK(checkError(c, [](B r) { r.setKey("no-limit-at-all"); }) ==
        proto::ErrorCode::INVALID_ARGUMENT);
  // An unset algorithm means the default (token bucket), as over HTTP.
  CHECK(checkError(c, [](B r) {
          inlineLimit(r, "k2", 5);
          r.getLimit().setAlgorithm(proto::Algorithm::UNSPECIFIED);
        }) == proto::ErrorCode::NONE);
}

TEST_CASE("unsupported protocol versions are refused, version 0 (unset) included") {
  Node n;
  Raw c(n.server->port());
  auto fill = [](proto::CheckRequest::Builder r) { inlineLimit(r, "k", 5); };
  CHECK(checkError(c, fill, 0) == proto::ErrorCode::UNSUPPORTED_VERSION);
  CHECK(checkError(c, fill, proto::PROTOCOL_VERSION + 1) == proto::ErrorCode::UNSUPPORTED_VERSION);
  CHECK(checkError(c, fill) == proto::ErrorCode::NONE);

  auto batch = c.node.checkBatchRequest();
  inlineLimit(batch.initChecks(1)[0], "k", 5);  // version left unset
  auto resp = batch.send().wait(c.ws);
  CHECK(resp.getError().getCode() == proto::ErrorCode::UNSUPPORTED_VERSION);

  auto set = c.node.setRuleRequest();
  set.setVersion(99);
  CHECK(set.send().wait(c.ws).getError().getCode() == proto::ErrorCode::UNSUPPORTED_VERSION);

  // listRules has no error field: refused with an RPC exception; the connection stays usable.
  auto list = c.node.listRulesRequest();
  CHECK_THROWS(list.send().wait(c.ws));
  // nodeInfo answers any version: it is how a client learns the node's.
  auto info = c.node.nodeInfoRequest().send().wait(c.ws);
  CHECK(info.getInfo().getProtocolVersion() == proto::PROTOCOL_VERSION);
  CHECK(checkError(c, fill) == proto::ErrorCode::NONE);
}

TEST_CASE("admin calls round trip") {
  NodeInfo info;
  info.node_id = "node-7";
  info.rpc_address = "127.0.0.1:7400";
  info.uptime_ms = 1234;
  Node n({}, [info] { return info; });
  Raw c(n.server->port());
  const auto v = proto::PROTOCOL_VERSION;

  auto ni = c.node.nodeInfoRequest();
  ni.setVersion(v);
  auto got = ni.send().wait(c.ws);
  CHECK(got.getInfo().getNodeId() == "node-7");
  CHECK(got.getInfo().getRpcAddress() == "127.0.0.1:7400");
  CHECK(got.getInfo().getUptimeMs() == 1234);
  CHECK(got.getInfo().getVersion() == kVersion);

  auto set = c.node.setRuleRequest();
  set.setVersion(v);
  auto rule = set.initRule();
  rule.setName("api");
  rule.initLimit().setAlgorithm(proto::Algorithm::FIXED_WINDOW);
  rule.getLimit().setLimit(3);
  rule.getLimit().setPeriodMs(1000);
  CHECK(set.send().wait(c.ws).getError().getCode() == proto::ErrorCode::NONE);

  auto bad = c.node.setRuleRequest();
  bad.setVersion(v);
  bad.initRule().setName("bad name!");
  CHECK(bad.send().wait(c.ws).getError().getCode() == proto::ErrorCode::INVALID_ARGUMENT);

  auto list = c.node.listRulesRequest();
  list.setVersion(v);
  auto rules = list.send().wait(c.ws);
  REQUIRE(rules.getRules().size() == 1);
  CHECK(rules.getRules()[0].getName() == "api");
  CHECK(rules.getRules()[0].getLimit().getAlgorithm() == proto::Algorithm::FIXED_WINDOW);
  CHECK(rules.getRules()[0].getLimit().getLimit() == 3);
  CHECK(rules.getRules()[0].getLimit().getPeriodMs() == 1000);

  auto byRule = [](proto::CheckRequest::Builder r) {
    r.setKey("u");
    r.setRule("api");
  };
  CHECK(checkError(c, byRule) == proto::ErrorCode::NONE);
  CHECK(checkError(c, byRule) == proto::ErrorCode::NONE);

  auto ins = c.node.inspectKeyRequest();
  ins.setVersion(v);
  byRule(ins.initRequest());
  auto inspected = ins.send().wait(c.ws);  // the reader below points into it
  auto inspection = inspected.getInspection();
  CHECK(inspection.getError().getCode() == proto::ErrorCode::NONE);
  CHECK(inspection.getFound());
  CHECK(inspection.getAlgorithm() == proto::Algorithm::FIXED_WINDOW);
  CHECK(inspection.getCount() == 2);
  CHECK(inspection.getRemaining() == 1);

  auto reset = c.node.resetKeyRequest();
  reset.setVersion(v);
  byRule(reset.initRequest());
  auto reset_answer = reset.send().wait(c.ws);
  CHECK(reset_answer.getError().getCode() == proto::ErrorCode::NONE);
  CHECK(reset_answer.getExisted());

  auto del = c.node.deleteRuleRequest();
  del.setVersion(v);
  del.setName("api");
  CHECK(del.send().wait(c.ws).getDeleted());
  auto del2 = c.node.deleteRuleRequest();
  del2.setVersion(v);
  del2.setName("api");
  CHECK_FALSE(del2.send().wait(c.ws).getDeleted());
  CHECK(checkError(c, byRule) == proto::ErrorCode::NOT_FOUND);

  auto reload = c.node.reloadRulesRequest();
  reload.setVersion(v);
  CHECK(reload.send().wait(c.ws).getError().getCode() == proto::ErrorCode::NOT_FOUND);  // no file
}

TEST_CASE("a message over the traversal limit fails that call; the node keeps serving") {
  RpcServerOptions options;
  options.traversal_limit_words = 1024;  // 8 KiB
  Node n(options);
  {
    Raw c(n.server->port());
    const std::string huge(64 * 1024, 'h');
    auto req = c.node.checkRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    inlineLimit(req.initRequest(), huge.c_str(), 5);
    CHECK_THROWS(req.send().wait(c.ws));
  }
  Raw c2(n.server->port());
  CHECK(checkError(c2, [](proto::CheckRequest::Builder r) { inlineLimit(r, "k", 5); }) ==
        proto::ErrorCode::NONE);
}

TEST_CASE("several threads share one port") {
  RpcServerOptions options;
  options.threads = 3;
  Node n(options);
  std::vector<std::unique_ptr<Raw>> clients;
  for (int i = 0; i < 6; ++i) clients.push_back(std::make_unique<Raw>(n.server->port()));
  // EzRpcClients share this thread's event loop; each makes one call.
  for (auto& c : clients) {
    CHECK(checkError(*c, [](proto::CheckRequest::Builder r) { inlineLimit(r, "shared", 100); }) ==
          proto::ErrorCode::NONE);
  }
  CHECK(n.server->stats().calls == 6);
  CHECK(n.server->stats().connections == 6);
}

TEST_CASE("connections above max_connections are closed at once") {
  RpcServerOptions options;
  options.max_connections = 1;
  Node n(options);
  Raw first(n.server->port());
  auto fill = [](proto::CheckRequest::Builder r) { inlineLimit(r, "k", 5); };
  CHECK(checkError(first, fill) == proto::ErrorCode::NONE);
  {
    capnp::EzRpcClient second("127.0.0.1", n.server->port());
    auto node = second.getMain<proto::Node>();
    auto req = node.checkRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    fill(req.initRequest());
    CHECK_THROWS(req.send().wait(second.getWaitScope()));
  }
  CHECK(n.server->stats().rejected_connections == 1);
  CHECK(checkError(first, fill) == proto::ErrorCode::NONE);
}

TEST_CASE("start reports a port in use; stop is idempotent") {
  Node n;
  RpcServerOptions options;
  options.bind_address = "127.0.0.1";
  options.port = n.server->port();
  auto clash = RpcServer::start(options, *n.service, {}, nullptr);
  REQUIRE_FALSE(clash.ok());
  CHECK(clash.error().code == ErrorCode::kUnavailable);

  options.port = 0;
  options.threads = 0;
  CHECK(RpcServer::start(options, *n.service, {}, nullptr).error().code ==
        ErrorCode::kInvalidArgument);

  n.server->stop();
  n.server->stop();
}

TEST_CASE("a connection's role limits its calls, and a refused call changes nothing") {
  Node n;
  kj::EventLoop loop;
  kj::WaitScope ws(loop);
  Router router(*n.service, nullptr, nullptr);
  RpcCounters counters;
  bool drained = false;
  std::uint64_t handed = 0;
  NodeControl control;
  control.drain = [&]() -> Status {
    drained = true;
    return Ok{};
  };
  control.handoff = [&](const std::string&, std::span<const std::uint16_t>,
                        std::span<const std::uint8_t>) -> Result<std::uint64_t> {
    return ++handed;
  };
  const auto as = [&](proto::Role role) {
    return proto::Node::Client(
        kj::heap<RpcService>(router, NodeInfoProvider{}, nullptr, counters, &control, role));
  };
  const auto setRule = [&](proto::Node::Client& node) {
    auto req = node.setRuleRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    auto rule = req.initRule();
    rule.setName("api");
    rule.initLimit().setLimit(3);
    rule.getLimit().setPeriodMs(1000);
    return req.send().wait(ws).getError().getCode();
  };
  const auto drain = [&](proto::Node::Client& node) {
    auto req = node.drainRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    return req.send().wait(ws).getError().getCode();
  };
  const auto handoff = [&](proto::Node::Client& node) {
    auto req = node.handoffRequest();
    req.setVersion(proto::PROTOCOL_VERSION);
    req.setFrom("x");
    return req.send().wait(ws).getError().getCode();
  };

  auto client = as(proto::Role::kClient);
  CHECK(setRule(client) == proto::ErrorCode::PERMISSION_DENIED);
  CHECK(drain(client) == proto::ErrorCode::PERMISSION_DENIED);
  CHECK(handoff(client) == proto::ErrorCode::PERMISSION_DENIED);
  CHECK(n.service->rules().empty());
  CHECK_FALSE(drained);
  CHECK(handed == 0);
  // A client's checks are decided as entering here, whatever hops and decide-by it claims: a
  // "forwarded" batch past its decide-by time is still decided, not refused as notDecided.
  auto batch = client.checkBatchRequest();
  batch.setVersion(proto::PROTOCOL_VERSION);
  batch.setHops(5);
  batch.setDecideByMs(1);
  inlineLimit(batch.initChecks(1)[0], "k", 5);
  auto answer = batch.send().wait(ws);
  CHECK(answer.getError().getCode() == proto::ErrorCode::NONE);
  REQUIRE(answer.getResults().size() == 1);
  CHECK(answer.getResults()[0].getAllowed());

  auto peer = as(proto::Role::kPeer);
  CHECK(handoff(peer) == proto::ErrorCode::NONE);
  CHECK(handed == 1);
  CHECK(setRule(peer) == proto::ErrorCode::PERMISSION_DENIED);
  auto admin = as(proto::Role::kAdmin);
  CHECK(setRule(admin) == proto::ErrorCode::NONE);
  CHECK(n.service->rules().size() == 1);
  CHECK(drain(admin) == proto::ErrorCode::NONE);
  CHECK(drained);
}

TEST_CASE("a connection that sends nothing for idle_timeout is closed; a busy one stays") {
  RpcServerOptions options;
  options.idle_timeout = std::chrono::milliseconds(600);
  Node n(options);
  // Busy: a check every 100 ms for a second (longer than the idle timeout), on one connection;
  // a gap would have to stretch sixfold on a loaded machine to count as idle.
  Raw busy(n.server->port());
  auto fill = [](proto::CheckRequest::Builder r) { inlineLimit(r, "busy", 100); };
  auto& timer = busy.rpc.getIoProvider().getTimer();
  for (int i = 0; i < 10; ++i) {
    CHECK(checkError(busy, fill) == proto::ErrorCode::NONE);
    timer.afterDelay(100 * kj::MILLISECONDS).wait(busy.ws);
  }
  // Idle: a raw socket that never sends a byte is closed by the server (recv sees the end).
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(n.server->port());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  timeval bound{10, 0};  // a bound on the test, not a wait: the close comes after ~600 ms
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
  char byte = 0;
  CHECK(::recv(fd, &byte, 1, 0) == 0);
  ::close(fd);
  CHECK(n.server->stats().idle_closed >= 1);
}

// The public Client: validates options, owns the KJ thread, and turns calls into jobs for it.
#include "throttlex/client.h"

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include <array>
#include <cstdio>
#include <thread>

#include "client/src/convert.h"
#include "client/src/core.h"
#include "client/src/inbox.h"
#include "client/src/routing.h"

namespace throttlex::client {

using detail::AdminCall;
using detail::AdminPending;
using detail::CheckSink;
using detail::Core;
using detail::kMaxNodes;

namespace {

class PromiseSink final : public CheckSink {
 public:
  explicit PromiseSink(std::promise<CheckResult> promise) : promise_(std::move(promise)) {}
  void deliver(std::size_t, CheckResult result) override { promise_.set_value(std::move(result)); }

 private:
  std::promise<CheckResult> promise_;
};

class CallbackSink final : public CheckSink {
 public:
  explicit CallbackSink(Client::Callback done) : done_(std::move(done)) {}
  // The callback runs on the client's loop thread; whatever it throws stays here, so one
  // misbehaving callback cannot take down the loop or spoil other callers' results.
  void deliver(std::size_t, CheckResult result) override {
    try {
      done_(std::move(result));
    } catch (...) {
    }
  }

 private:
  Client::Callback done_;
};

// Collects a checkBatch()'s results; hands them over when the last one arrives.
class BatchSink final : public CheckSink {
 public:
  explicit BatchSink(std::size_t n) : results_(n), remaining_(n) {}
  std::future<std::vector<CheckResult>> future() { return promise_.get_future(); }
  void deliver(std::size_t index, CheckResult result) override {
    results_[index] = std::move(result);
    if (--remaining_ == 0) promise_.set_value(std::move(results_));
  }

 private:
  std::vector<CheckResult> results_;
  std::size_t remaining_;
  std::promise<std::vector<CheckResult>> promise_;
};

Status validate(const ClientOptions& o) {
  const auto bad = [](std::string m) { return Error{ErrorCode::kInvalidArgument, std::move(m)}; };
  if (o.nodes.empty()) return bad("no nodes given (ClientOptions::nodes)");
  if (o.nodes.size() > kMaxNodes) return bad("at most 64 nodes");
  for (const std::string& node : o.nodes) {
    if (!detail::validNodeAddress(node)) {
      return bad("bad node address '" + node + "' (expected host:port)");
    }
  }
  if (o.deadline.count() <= 0 || o.admin_deadline.count() <= 0 || o.connect_timeout.count() <= 0) {
    return bad("deadlines and the connect timeout must be positive");
  }
  if (o.max_batch < 1 || o.max_batch > kMaxBatch) return bad("max_batch must be 1..1000");
  if (o.retry_backoff_min.count() <= 0 || o.retry_backoff_max < o.retry_backoff_min) {
    return bad("retry backoff: need 0 < min <= max");
  }
  if (o.ring_refresh.count() <= 0) return bad("ring_refresh must be positive");
  // Written so that NaN fails too.
  if (!(o.overload_throttle == 0 || (o.overload_throttle >= 1 && o.overload_throttle <= 1e6))) {
    return bad("overload_throttle must be 0 (off) or 1..1000000");
  }
  return Ok{};
}

// KJ's monotonic clock: the one the client's timers (deadlines, backoff) read.
std::int64_t monotonicNs() {
  return (kj::systemPreciseMonotonicClock().now() - kj::origin<kj::TimePoint>()) / kj::NANOSECONDS;
}

}  // namespace

std::string formatRulesVersion(const RulesVersion& v) {
  char digest[17];
  std::snprintf(digest, sizeof digest, "%016llx", static_cast<unsigned long long>(v.digest));
  return std::to_string(v.counter) + "." + digest;
}

std::string_view errorCodeName(ErrorCode code) {
  static constexpr std::array<std::string_view, 10> kNames = {"none",
                                                              "invalid_argument",
                                                              "not_found",
                                                              "unavailable",
                                                              "deadline_exceeded",
                                                              "resource_exhausted",
                                                              "internal",
                                                              "unsupported_version",
                                                              "unknown",
                                                              "permission_denied"};
  const auto i = static_cast<std::size_t>(code);
  return i < kNames.size() ? kNames[i] : std::string_view("unknown");
}

struct Client::Impl {
  // Constant after construction.
  const ClientOptions options;
  std::shared_ptr<const proto::TlsConfig> tls;  // loaded by connect(); null without TLS
  std::thread::id loop_thread;

  detail::Inbox inbox;
  detail::AtomicStats stats;
  std::thread thread;

  explicit Impl(ClientOptions o) : options(std::move(o)) {}
  ~Impl() {
    inbox.close();
    if (thread.joinable()) thread.join();
  }

  bool onLoopThread() const { return std::this_thread::get_id() == loop_thread; }

  void run(std::promise<void>& started) {
    auto io = kj::setupAsyncIo();
    Core core(options, io, stats, tls.get());
    kj::UnixEventPort::FdObserver observer(io.unixEventPort, inbox.fd(),
                                           kj::UnixEventPort::FdObserver::OBSERVE_READ);
    started.set_value();
    inbox.run(observer, core).wait(io.waitScope);
    core.shutdown();
  }

  void submit(std::vector<CheckSpec> specs, std::shared_ptr<CheckSink> sink, Deadline deadline) {
    const std::size_t n = specs.size();
    const auto d = deadline.value_or(options.deadline);
    if (d <=
        std::chrono::milliseconds(0)) {  // it could only time out, and mark a healthy node down
      for (std::size_t i = 0; i < n; ++i) {
        sink->deliver(
            i, detail::errorResult(ErrorCode::kInvalidArgument, "a deadline must be positive"));
      }
      return;
    }
    auto job = detail::makeJob([specs = std::move(specs), sink, d](Core& core) mutable {
      core.submitChecks(std::move(specs), std::move(sink), d);
    });
    if (inbox.post(std::move(job))) return;
    for (std::size_t i = 0; i < n; ++i) {
      sink->deliver(i, detail::unavailableResult(options.on_unavailable, ErrorCode::kUnavailable,
                                                 "the client is shutting down"));
    }
  }

  // `slot`: the call is about one key, best answered by its owner.
  template <typename T>
  Result<T> admin(typename AdminCall<T>::Send send, Deadline deadline,
                  std::optional<std::uint32_t> slot = std::nullopt) {
    if (onLoopThread()) return syncFromCallback();
    std::promise<Result<T>> promise;
    auto future = promise.get_future();
    auto call = std::make_unique<AdminCall<T>>(std::move(send), std::move(promise));
    call->slot = slot;
    return await(std::move(call), std::move(future), deadline);
  }

  // Hands `call` to the client thread and waits for what it puts into `future`.
  template <typename T>
  Result<T> await(std::unique_ptr<AdminPending> call, std::future<Result<T>> future,
                  Deadline deadline) {
    const auto d = deadline.value_or(options.admin_deadline);
    // If the inbox is closed, the job and the call die here; the call's destructor answers.
    inbox.post(detail::makeJob(
        [call = std::move(call), d](Core& core) mutable { core.submitAdmin(std::move(call), d); }));
    return future.get();
  }

  static Error syncFromCallback() {
    return {ErrorCode::kInvalidArgument,
            "a synchronous client call from a client callback would deadlock; use checkAsync"};
  }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::connect(ClientOptions options) {
  if (Status s = validate(options); !s) return s.error();
  auto impl = std::make_unique<Impl>(std::move(options));
  if (!impl->inbox.ok()) return Error{ErrorCode::kInternal, "eventfd() failed"};
  const proto::TlsFiles tls{impl->options.tls_ca, impl->options.tls_cert, impl->options.tls_key};
  if (tls.enabled()) {
    auto loaded = proto::TlsConfig::load(tls);
    if (!loaded) return Error{ErrorCode::kInvalidArgument, "TLS: " + loaded.error().message};
    impl->tls = std::move(*loaded);
  }

  std::promise<void> started;
  auto ready = started.get_future();
  Impl& self = *impl;
  impl->thread = std::thread([&self, started = std::move(started)]() mutable {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { self.run(started); })) {
      // Setting up the event loop failed (out of descriptors); connect() reports it.
      KJ_LOG(ERROR, "throttlex client thread failed", *e);
      try {
        started.set_exception(std::make_exception_ptr(std::runtime_error("client thread failed")));
      } catch (const std::future_error&) {
      }
    }
  });
  impl->loop_thread = impl->thread.get_id();
  try {
    ready.get();
  } catch (const std::runtime_error&) {
    return Error{ErrorCode::kInternal, "the client's event loop failed to start (see the log)"};
  }
  auto client = std::unique_ptr<Client>(new Client(std::move(impl)));
  if (client->impl_->options.lazy_connect) return client;

  // Wait until some node answers, so that a wrong address or a dead cluster shows up now. Each
  // node gets a connect timeout, and the answer one more regular deadline.
  const auto& o = client->impl_->options;
  const auto probe_deadline =
      o.connect_timeout * static_cast<std::int64_t>(o.nodes.size()) + o.admin_deadline;
  auto info = client->nodeInfo(probe_deadline);
  if (!info) {
    const Error& e = info.error();
    if (e.code == ErrorCode::kUnavailable) return e;
    return Error{e.code == ErrorCode::kDeadlineExceeded ? ErrorCode::kUnavailable : e.code,
                 "no ThrottleX node reachable: " + e.message};
  }
  if (info->protocol_version < proto::PROTOCOL_VERSION) {
    return Error{ErrorCode::kUnsupportedVersion,
                 "the node speaks protocol version " + std::to_string(info->protocol_version) +
                     "; this client needs " + std::to_string(proto::PROTOCOL_VERSION)};
  }
  return client;
}

CheckResult Client::check(const CheckSpec& spec, Deadline deadline) {
  if (impl_->onLoopThread()) {
    return detail::errorResult(ErrorCode::kInvalidArgument, Impl::syncFromCallback().message);
  }
  return checkAsync(spec, deadline).get();
}

void Client::checkAsync(CheckSpec spec, Callback done, Deadline deadline) {
  if (!done) return;  // nobody to tell: a check without a callback would only spend quota
  std::vector<CheckSpec> specs;
  specs.push_back(std::move(spec));
  impl_->submit(std::move(specs), std::make_shared<CallbackSink>(std::move(done)), deadline);
}

std::future<CheckResult> Client::checkAsync(CheckSpec spec, Deadline deadline) {
  std::promise<CheckResult> promise;
  auto future = promise.get_future();
  std::vector<CheckSpec> specs;
  specs.push_back(std::move(spec));
  impl_->submit(std::move(specs), std::make_shared<PromiseSink>(std::move(promise)), deadline);
  return future;
}

std::vector<CheckResult> Client::checkBatch(std::vector<CheckSpec> specs, Deadline deadline) {
  if (specs.empty()) return {};
  if (impl_->onLoopThread()) {
    return std::vector<CheckResult>(
        specs.size(),
        detail::errorResult(ErrorCode::kInvalidArgument, Impl::syncFromCallback().message));
  }
  auto sink = std::make_shared<BatchSink>(specs.size());
  auto future = sink->future();
  impl_->submit(std::move(specs), std::move(sink), deadline);
  return future.get();
}

Result<NodeInfo> Client::nodeInfo(Deadline deadline) {
  if (impl_->onLoopThread()) return Impl::syncFromCallback();
  // A NodeInfoCall rather than an AdminCall: the answer also teaches the client the ring.
  auto promise = std::make_shared<std::promise<Result<NodeInfo>>>();
  auto future = promise->get_future();
  auto call = std::make_unique<detail::NodeInfoCall>(
      [promise](Result<NodeInfo> r) { promise->set_value(std::move(r)); });
  return impl_->await(std::move(call), std::move(future), deadline);
}

Result<std::vector<Rule>> Client::listRules(Deadline deadline) {
  return impl_->admin<std::vector<Rule>>(
      [](proto::Node::Client& node) {
        auto request = node.listRulesRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        return request.send().then([](capnp::Response<proto::Admin::ListRulesResults>&& r) {
          std::vector<Rule> rules;
          for (auto rule : r.getRules()) rules.push_back(detail::fromProto(rule));
          return Result<std::vector<Rule>>(std::move(rules));
        });
      },
      deadline);
}

namespace {

// A rules change's answer: its error, or the version it made.
template <typename Results>
Result<RulesChange> rulesChange(const Results& r, RulesChange made = {}) {
  const Error e = detail::fromProto(r.getError());
  if (e.code != ErrorCode::kNone) return e;
  made.version = {r.getRules().getCounter(), r.getRules().getDigest()};
  return made;
}

}  // namespace

Result<RulesChange> Client::setRule(const Rule& rule, Deadline deadline) {
  return impl_->admin<RulesChange>(
      [rule](proto::Node::Client& node) {
        auto request = node.setRuleRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        detail::toProto(rule, request.initRule());
        return request.send().then(
            [](capnp::Response<proto::Admin::SetRuleResults>&& r) { return rulesChange(r); });
      },
      deadline);
}

Result<RulesChange> Client::deleteRule(const std::string& name, Deadline deadline) {
  return impl_->admin<RulesChange>(
      [name](proto::Node::Client& node) {
        auto request = node.deleteRuleRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        request.setName(kj::StringPtr(name.c_str(), name.size()));
        return request.send().then([](capnp::Response<proto::Admin::DeleteRuleResults>&& r) {
          return rulesChange(r, {{}, r.getDeleted(), 0});
        });
      },
      deadline);
}

Result<RulesChange> Client::reloadRules(Deadline deadline) {
  return impl_->admin<RulesChange>(
      [](proto::Node::Client& node) {
        auto request = node.reloadRulesRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        return request.send().then([](capnp::Response<proto::Admin::ReloadRulesResults>&& r) {
          return rulesChange(r, {{}, true, r.getCount()});
        });
      },
      deadline);
}

Result<AtomicResult> Client::checkAtomic(const std::vector<CheckSpec>& specs, Deadline deadline) {
  if (specs.empty() || specs.size() > impl_->options.max_batch) {
    return Error{ErrorCode::kInvalidArgument, "an atomic batch takes 1 to max_batch (" +
                                                  std::to_string(impl_->options.max_batch) +
                                                  ") checks"};
  }
  for (const CheckSpec& s : specs) {
    if (s.key.empty() || s.key.size() > kMaxKeyBytes) {
      return Error{ErrorCode::kInvalidArgument, "a key must be 1 to 1024 bytes"};
    }
  }
  return impl_->admin<AtomicResult>(
      [specs](proto::Node::Client& node) {
        auto request = node.checkBatchRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        request.setAtomic(true);
        auto list = request.initChecks(static_cast<unsigned>(specs.size()));
        for (std::size_t i = 0; i < specs.size(); ++i) {
          detail::toProto(specs[i], list[static_cast<unsigned>(i)]);
        }
        return request.send().then([](capnp::Response<proto::Limiter::CheckBatchResults>&& r) {
          const Error e = detail::fromProto(r.getError());
          if (e.code != ErrorCode::kNone) return Result<AtomicResult>(e);
          AtomicResult out;
          for (auto result : r.getResults()) out.results.push_back(detail::fromProto(result));
          if (r.getDeniedBy() >= 0) out.denied_by = static_cast<std::size_t>(r.getDeniedBy());
          out.allowed = !out.denied_by.has_value();
          return Result<AtomicResult>(std::move(out));
        });
      },
      deadline.value_or(impl_->options.deadline));
}

Result<SnapshotResult> Client::snapshot(Deadline deadline) {
  return impl_->admin<SnapshotResult>(
      [](proto::Node::Client& node) {
        auto request = node.snapshotRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        return request.send().then([](capnp::Response<proto::Admin::SnapshotResults>&& r) {
          const Error e = detail::fromProto(r.getError());
          return e.code == ErrorCode::kNone
                     ? Result<SnapshotResult>(SnapshotResult{r.getWritten(), r.getPending()})
                     : Result<SnapshotResult>(e);
        });
      },
      deadline);
}

Status Client::drain(Deadline deadline) {
  return impl_->admin<Ok>(
      [](proto::Node::Client& node) {
        auto request = node.drainRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        return request.send().then([](capnp::Response<proto::Admin::DrainResults>&& r) {
          const Error e = detail::fromProto(r.getError());
          return e.code == ErrorCode::kNone ? Status(Ok{}) : Status(e);
        });
      },
      deadline);
}

Result<std::vector<KeyringKey>> Client::keyring(KeyringOp op, const std::string& key,
                                                Deadline deadline) {
  using Keys = std::vector<KeyringKey>;
  return impl_->admin<Keys>(
      [op, key](proto::Node::Client& node) {
        auto request = node.keyringRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        request.setOp(op == KeyringOp::kInstall  ? proto::KeyringOp::INSTALL
                      : op == KeyringOp::kUse    ? proto::KeyringOp::USE
                      : op == KeyringOp::kRemove ? proto::KeyringOp::REMOVE
                                                 : proto::KeyringOp::LIST);
        request.setKey(key);
        return request.send().then([](capnp::Response<proto::Admin::KeyringResults>&& r) {
          const Error e = detail::fromProto(r.getError());
          if (e.code != ErrorCode::kNone) return Result<Keys>(e);
          Keys keys;
          for (auto k : r.getKeys()) keys.push_back({k.getId().cStr(), k.getPrimary()});
          return Result<Keys>(std::move(keys));
        });
      },
      deadline);
}

Result<KeyInspection> Client::inspect(const CheckSpec& spec, Deadline deadline) {
  return impl_->admin<KeyInspection>(
      [spec](proto::Node::Client& node) {
        auto request = node.inspectKeyRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        detail::toProto(spec, request.initRequest());
        return request.send().then([](capnp::Response<proto::Admin::InspectKeyResults>&& r) {
          const auto ins = r.getInspection();
          const Error e = detail::fromProto(ins.getError());
          return e.code == ErrorCode::kNone ? Result<KeyInspection>(detail::fromProto(ins))
                                            : Result<KeyInspection>(e);
        });
      },
      deadline, detail::slotOf(spec));
}

Result<bool> Client::reset(const CheckSpec& spec, Deadline deadline) {
  return impl_->admin<bool>(
      [spec](proto::Node::Client& node) {
        auto request = node.resetKeyRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        detail::toProto(spec, request.initRequest());
        return request.send().then([](capnp::Response<proto::Admin::ResetKeyResults>&& r) {
          const Error e = detail::fromProto(r.getError());
          return e.code == ErrorCode::kNone ? Result<bool>(r.getExisted()) : Result<bool>(e);
        });
      },
      deadline, detail::slotOf(spec));
}

namespace {

// A report call nobody waits for: its outcome only counts (on the client thread).
class ReportCall final : public detail::AdminPending {
 public:
  ReportCall(std::vector<Report> reports, detail::AtomicStats& stats)
      : reports_(std::move(reports)), stats_(stats) {}
  ~ReportCall() override { fail({ErrorCode::kUnavailable, "the client is shutting down"}); }

  kj::Promise<void> send(proto::Node::Client& node, std::size_t, detail::Core&) override {
    auto request = node.reportRequest();
    request.setVersion(proto::PROTOCOL_VERSION);
    auto list = request.initReports(static_cast<unsigned>(reports_.size()));
    for (unsigned i = 0; i < reports_.size(); ++i) detail::toProto(reports_[i], list[i]);
    return request.send().then([this](capnp::Response<proto::Limiter::ReportResults>&& r) {
      complete(detail::fromProto(r.getError()).code == ErrorCode::kNone);
    });
  }
  void fail(Error) override { complete(false); }

 private:
  void complete(bool ok) {
    if (std::exchange(done_, true)) return;
    if (!ok) stats_.reports_failed.fetch_add(reports_.size(), std::memory_order_relaxed);
  }
  std::vector<Report> reports_;
  detail::AtomicStats& stats_;
  bool done_ = false;
};

Status checkReports(const std::vector<Report>& reports) {
  if (reports.empty() || reports.size() > 1000) {
    return Error{ErrorCode::kInvalidArgument, "a report call takes 1 to 1000 reports"};
  }
  return Ok{};
}

}  // namespace

Result<std::uint32_t> Client::report(const std::vector<Report>& reports, Deadline deadline) {
  if (Status s = checkReports(reports); !s) return s.error();
  return impl_->admin<std::uint32_t>(
      [reports](proto::Node::Client& node) {
        auto request = node.reportRequest();
        request.setVersion(proto::PROTOCOL_VERSION);
        auto list = request.initReports(static_cast<unsigned>(reports.size()));
        for (unsigned i = 0; i < reports.size(); ++i) detail::toProto(reports[i], list[i]);
        return request.send().then([](capnp::Response<proto::Limiter::ReportResults>&& r) {
          const Error e = detail::fromProto(r.getError());
          if (e.code != ErrorCode::kNone) return Result<std::uint32_t>(e);
          return Result<std::uint32_t>(r.getTaken());
        });
      },
      deadline.value_or(impl_->options.deadline));
}

void Client::reportAsync(std::vector<Report> reports) {
  if (!checkReports(reports)) {
    impl_->stats.reports_failed.fetch_add(reports.size(), std::memory_order_relaxed);
    return;
  }
  impl_->inbox.post(
      detail::makeJob([call = std::make_unique<ReportCall>(std::move(reports), impl_->stats),
                       d = impl_->options.deadline](detail::Core& core) mutable {
        core.submitAdmin(std::move(call), d);
      }));
}

ScopedReport::ScopedReport(Client& client, std::string rule)
    : client_(client),
      rule_(std::move(rule)),
      start_ns_(monotonicNs()),
      exceptions_(std::uncaught_exceptions()) {}

ScopedReport::~ScopedReport() {
  Report r;
  r.rule = std::move(rule_);
  r.latency = std::chrono::nanoseconds(monotonicNs() - start_ns_);
  r.outcome = outcome_.value_or(std::uncaught_exceptions() > exceptions_ ? ReportOutcome::kError
                                                                         : ReportOutcome::kOk);
  client_.reportAsync({std::move(r)});
}

ClientStats Client::stats() const {
  const auto& s = impl_->stats;
  ClientStats out;
  out.calls = s.calls.load(std::memory_order_relaxed);
  out.checks = s.checks.load(std::memory_order_relaxed);
  out.fallbacks = s.fallbacks.load(std::memory_order_relaxed);
  out.failovers = s.failovers.load(std::memory_order_relaxed);
  out.nodes_marked_down = s.nodes_marked_down.load(std::memory_order_relaxed);
  out.checks_to_owner = s.checks_to_owner.load(std::memory_order_relaxed);
  out.checks_not_to_owner = s.checks_not_to_owner.load(std::memory_order_relaxed);
  out.ring_members = s.ring_members.load(std::memory_order_relaxed);
  out.checks_shed_locally = s.checks_shed_locally.load(std::memory_order_relaxed);
  out.reports_failed = s.reports_failed.load(std::memory_order_relaxed);
  return out;
}

}  // namespace throttlex::client

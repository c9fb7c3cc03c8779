// The client's engine, on its own KJ event loop thread: connections to the nodes, routing and
// failover, adaptive batching, deadlines. Everything here belongs to that one thread; other
// threads reach it only through the Inbox (client/src/inbox.h).
//
// Invariants:
//  1. Every submitted check and admin call is completed exactly once: by the node's answer, by
//     its deadline timer, by "no node left to try", or, at the latest, when it is destroyed (a
//     check: its CheckRef) as the client shuts down. Completing marks it done; a done request left
//     in a queue or a batch is skipped and simply destroyed.
//  2. A node's `generation` changes whenever it is marked down. Callbacks of connects and calls
//     carry the generation they started under; a stale one touches nothing of the node but
//     re-routes its own requests.
//  3. Everything started on a node's current connection is wrapped by that node's canceler, so
//     marking the node down cancels it at once (its requests are then re-routed).
//  4. Nodes are never removed: an index, and so a request's `tried` bit, names one node for the
//     Core's whole life. Nodes learned from a member list are appended (at most kMaxNodes in all).
//  5. Checks travel as CheckRefs into their submission's CheckGroup; a check that is not done has
//     exactly one CheckRef (queued, in a batch or being routed). The group, its specs and its one
//     deadline timer live until its last CheckRef is gone. Completing a check never destroys a
//     CheckRef, so a group never dies inside its own timer's callback.
//
// Routing: with a ring known (two or more members, learned from any nodeInfo answer), a
// check goes to its key's owner when that node is usable for it; otherwise, and always without a
// ring, to the first usable node from `preferred_` on (failover order).
#pragma once

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/refcount.h>
#include <kj/timer.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "client/src/routing.h"
#include "proto/rpc_tls.h"
#include "proto/throttlex.capnp.h"
#include "throttlex/client.h"

namespace throttlex::client::detail {

class Core;

// A request remembers the nodes it tried in 64 bits: configured and learned nodes together.
inline constexpr std::size_t kMaxNodes = 64;

// Written only by the client thread (relaxed); read by Client::stats() from any thread.
struct AtomicStats {
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> checks{0};
  std::atomic<std::uint64_t> fallbacks{0};
  std::atomic<std::uint64_t> failovers{0};
  std::atomic<std::uint64_t> nodes_marked_down{0};
  std::atomic<std::uint64_t> checks_to_owner{0};
  std::atomic<std::uint64_t> checks_not_to_owner{0};
  std::atomic<std::uint64_t> ring_members{0};  // a gauge: stored, not bumped
  // Bumped on the client thread, and by reportAsync() for reports refused before sending: an
  // atomic add, as it has two writers.
  std::atomic<std::uint64_t> reports_failed{0};
  std::atomic<std::uint64_t> checks_shed_locally{0};

  static void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
};

// Where check results go; result i belongs to the i-th spec of the submission. Used on the client
// thread only (the final hand-off to a waiting thread goes through std::promise).
class CheckSink {
 public:
  virtual ~CheckSink() = default;
  virtual void deliver(std::size_t index, CheckResult result) = 0;
};

// A request waiting for a node: queued, connecting or in flight. Admin calls only; checks are
// CheckGroup / CheckRef below.
class Pending {
 public:
  virtual ~Pending() = default;
  void arm(kj::Timer& timer, kj::TimePoint deadline);  // starts the deadline timer
  kj::TimePoint deadline() const { return deadline_; }
  bool done() const { return done_; }

  std::uint64_t tried = 0;  // bit i: node i failed this request already

 protected:
  virtual void expire() = 0;  // the deadline passed before an answer
  bool done_ = false;

 private:
  kj::TimePoint deadline_ = kj::origin<kj::TimePoint>();
  kj::Promise<void> timer_ = nullptr;  // owned here: destroying the request cancels it
};

// The checks of one submission (one checkBatch or checkAsync): their specs, where their results
// go, and one deadline timer for all of them, since they share the deadline. (A timer per check
// cost several heap objects per check, and made the client, not the nodes, the bottleneck.)
// Shared by the CheckRefs of its checks (invariant 5); check i is the sink's index i.
class CheckGroup final : public kj::Refcounted {
 public:
  // Starts the timer: at `deadline`, every check not done yet completes as unavailable.
  CheckGroup(std::vector<CheckSpec> specs, std::shared_ptr<CheckSink> sink, OnUnavailable policy,
             AtomicStats& stats, kj::Timer& timer, kj::TimePoint deadline);

  std::size_t size() const { return specs_.size(); }
  kj::TimePoint deadline() const { return deadline_; }
  const CheckSpec& spec(std::size_t i) const { return specs_[i]; }
  bool done(std::size_t i) const { return state_[i].done; }
  std::uint64_t& tried(std::size_t i) { return state_[i].tried; }

  void complete(std::size_t i, CheckResult result);                  // no-op when done
  void unavailable(std::size_t i, ErrorCode code, std::string why);  // as the policy says

 private:
  struct State {
    std::uint64_t tried = 0;  // bit n: node n failed this check already
    bool done = false;
  };
  void expire();

  const std::vector<CheckSpec> specs_;
  const std::shared_ptr<CheckSink> sink_;
  const OnUnavailable policy_;
  const kj::TimePoint deadline_;
  AtomicStats& stats_;
  std::vector<State> state_;
  kj::Promise<void> timer_ = nullptr;  // last: destroyed first, before what it touches
};

// One check of a CheckGroup, as it waits for a node: queued, in a batch or being routed. Move-only;
// destroying it completes the check if it is still open (as unavailable: the client is shutting
// down), then lets go of the group.
class CheckRef {
 public:
  CheckRef(kj::Own<CheckGroup> group, std::size_t index) : group_(kj::mv(group)), index_(index) {}
  CheckRef(CheckRef&&) noexcept = default;
  CheckRef& operator=(CheckRef&&) = delete;  // nothing needs it; it would have to complete
  ~CheckRef();

  bool done() const { return group_->done(index_); }
  const CheckSpec& spec() const { return group_->spec(index_); }
  kj::TimePoint deadline() const { return group_->deadline(); }
  std::uint64_t& tried() { return group_->tried(index_); }
  void complete(CheckResult result) { group_->complete(index_, std::move(result)); }
  void unavailable(ErrorCode code, std::string why) {
    group_->unavailable(index_, code, std::move(why));
  }

 private:
  kj::Own<CheckGroup> group_;  // null once moved from
  std::size_t index_;
};

class AdminPending : public Pending {
 public:
  // Sends the call on `node`, the Core's node `index`; the returned promise completes this
  // request when it resolves.
  virtual kj::Promise<void> send(proto::Node::Client& node, std::size_t index, Core& core) = 0;
  virtual void fail(Error error) = 0;  // no-op when done

  std::optional<std::uint32_t> slot;  // set: a call about one key, best sent to its owner

 protected:
  void expire() override { fail({ErrorCode::kDeadlineExceeded, "no answer within the deadline"}); }
};

// An admin call returning T, handed to a waiting thread through a std::promise.
template <typename T>
class AdminCall final : public AdminPending {
 public:
  using Send = std::function<kj::Promise<Result<T>>(proto::Node::Client&)>;
  AdminCall(Send send, std::promise<Result<T>> promise)
      : send_(std::move(send)), promise_(std::move(promise)) {}
  ~AdminCall() override { fail({ErrorCode::kUnavailable, "the client is shutting down"}); }

  kj::Promise<void> send(proto::Node::Client& node, std::size_t, Core&) override {
    return send_(node).then([this](Result<T>&& r) { complete(std::move(r)); });
  }
  void fail(Error error) override { complete(std::move(error)); }

 private:
  void complete(Result<T> r) {
    if (done_) return;
    done_ = true;
    promise_.set_value(std::move(r));
  }
  Send send_;
  std::promise<Result<T>> promise_;
};

// Admin nodeInfo, for a caller (Client::nodeInfo, connect()'s probe) or for the ring refresh:
// either way the answer first teaches the Core the cluster (Core::learn). `done` runs exactly once,
// on the client thread (from the destructor at the latest, with kUnavailable).
class NodeInfoCall final : public AdminPending {
 public:
  using Done = std::function<void(Result<NodeInfo>)>;
  explicit NodeInfoCall(Done done) : on_done_(std::move(done)) {}
  ~NodeInfoCall() override { fail({ErrorCode::kUnavailable, "the client is shutting down"}); }

  kj::Promise<void> send(proto::Node::Client& node, std::size_t index, Core& core) override;
  void fail(Error error) override { complete(std::move(error)); }

 private:
  void complete(Result<NodeInfo> r);
  Done on_done_;
};

class Core {
 public:
  // `tls`: null for plain TCP; must outlive the Core.
  Core(const ClientOptions& options, kj::AsyncIoContext& io, AtomicStats& stats,
       const proto::TlsConfig* tls = nullptr);
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  void submitChecks(std::vector<CheckSpec> specs, std::shared_ptr<CheckSink> sink,
                    std::chrono::milliseconds deadline);
  void submitAdmin(std::unique_ptr<AdminPending> call, std::chrono::milliseconds deadline);
  // Completes everything pending (as unavailable) and refuses what comes later. The loop does
  // not run again afterwards.
  void shutdown();

  // A nodeInfo answer from node `index` (NodeInfoCall): learns that node's id, the members'
  // addresses (adding nodes) and the ring. Changes no queue and starts nothing.
  void learn(std::size_t index, const NodeInfo& info);

 private:
  struct Connection;
  struct Node;
  struct Batch;
  struct AdminInFlight;
  using Checks = std::vector<CheckRef>;

  bool usable(const Node& node) const;
  std::optional<std::size_t> pickNode(std::uint64_t tried) const;
  std::optional<std::size_t> usableOwner(std::uint32_t slot, std::uint64_t tried) const;
  std::optional<std::size_t> nodeOfMember(const Member& member);
  void route(CheckRef check);
  // Adaptive throttling (ClientOptions::overload_throttle): counts `check`, bound for `node`, and
  // answers it here with its rule's last shed answer when the node's throttle says so.
  bool shedLocally(Node& node, CheckRef& check);
  // Counts the node's answer to a check: decided (accepted) or shed, and keeps a shed answer.
  void countAnswer(Node& node, const CheckSpec& spec, const CheckResult& r, kj::TimePoint now);
  void route(std::unique_ptr<AdminPending> call);
  std::string unavailableReason() const;

  void connect(std::size_t index);
  void onConnected(std::size_t index, std::uint64_t generation, kj::Own<kj::AsyncIoStream> stream);
  void onDisconnected(std::size_t index, std::uint64_t generation);
  void closeConnection(std::size_t index, const std::string& reason);
  void markDown(std::size_t index, const std::string& reason);

  void scheduleFlush(std::size_t index);
  void flush(std::size_t index);
  kj::TimePoint attemptDeadline(std::size_t index, kj::TimePoint deadline) const;
  void sendChecks(std::size_t index, Checks checks);
  void onBatchAnswered(Batch& batch, capnp::Response<proto::Limiter::CheckBatchResults>& answer);
  // The node's answer, check by check (in full, or a batch shed whole answered compactly); throws
  // on an answer Cap'n Proto cannot read.
  void deliverBatch(Batch& batch, capnp::Response<proto::Limiter::CheckBatchResults>& answer);
  void onBatchFailed(Batch& batch, kj::Exception&& e);
  void sendAdmin(std::size_t index, std::unique_ptr<AdminPending> call);
  void onAdminFailed(AdminInFlight& call, kj::Exception&& e);

  void scheduleRefresh();
  void refreshRing();
  void refreshSoon();

  // Constant after construction.
  const OnUnavailable policy_;
  const std::size_t max_batch_;
  const kj::Duration connect_timeout_;
  const kj::Duration backoff_min_;
  const kj::Duration backoff_max_;
  const kj::Duration admin_deadline_;
  const bool route_to_owner_;
  const kj::Duration ring_refresh_;
  // lazy_connect: no probe asks nodeInfo at connect(), so the first connection does.
  const bool learn_on_connect_;
  const double overload_throttle_;
  capnp::ReaderOptions reader_options_;
  kj::Network& network_;
  kj::Timer& timer_;
  AtomicStats& stats_;
  kj::Own<kj::TlsContext> tls_;  // null without TLS; outlives the nodes' connections

  std::vector<std::unique_ptr<Node>> nodes_;
  std::size_t preferred_ = 0;  // where failover starts: the last node that did not fail
  bool closing_ = false;

  OwnerTable owners_;
  bool learned_ = false;     // some node answered nodeInfo: periodic refreshes may start
  bool refreshing_ = false;  // our own refresh is pending (at most one at a time)
  kj::TimePoint last_refresh_ = kj::origin<kj::TimePoint>();  // when the last one started

  // Adaptive throttling: per rule, the last shed answer a node gave and when (a second old at
  // most is used), and the random numbers that pick which checks stay here.
  struct ShedAnswer {
    CheckResult result;
    kj::TimePoint at;
  };
  std::unordered_map<std::string, ShedAnswer> shed_answers_;
  std::uint64_t random_ = 0x9E3779B97F4A7C15ULL;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"  // KJ's interface; never deleted through it
  struct LogErrors final : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } log_errors_;
#pragma GCC diagnostic pop
  kj::TaskSet tasks_;  // last: destroyed first, while the nodes it refers to still exist
};

}  // namespace throttlex::client::detail

// Forwarding checks to the owners of their keys (docs/architecture.md, "The hot path").
//
// A forwarder loop holds a Cap'n Proto connection to each peer it forwards to; it routes each
// check by its slot through the current ring (RingHolder), batches per peer and completes each
// check through its sink. Every worker thread (HTTP and RPC) attaches a loop of its own
// (attachThread()): a check submitted there is routed, sent, answered and completed on that
// thread, over that thread's own connections — it never changes thread inside this process. A
// thread without a loop (the slot keeper releasing parked checks, tests) hands its checks to the
// forwarder's own thread through an eventfd-watched queue; those hand-offs are counted
// (ForwarderStats::handoffs) and stay 0 on the check path.
//
// Per peer, per loop:
//  - Adaptive batching: with no call in flight, everything queued leaves at once (no added
//    latency when idle); while a call is in flight, checks gather and leave together when it
//    returns, or as soon as a full batch (max_batch) has gathered. No timer.
//  - Silence, not one slow call, marks an owner down. Every peer in the ring gets a heartbeat
//    (an empty batch) every `heartbeat`; an owner that answered nothing for less than
//    `owner_silence` (T) keeps its checks, however long one call takes. Each batch carries a
//    decide-by time (last answer + T - margin, wall clock) after which the owner decides none of
//    it, so checks this node gives up on at T were decided by nobody. A stall of this node's own
//    loop does not count as the peer's silence.
//  - A circuit breaker: closed (forwarding); open after T of silence, a refused connect or a lost
//    connection (for a jittered cooldown that doubles while probes keep failing); half-open
//    after the cooldown, when heartbeats probe the peer while its checks still go to the
//    stand-in: the first answered closes the breaker, silence opens it again.
//
// A check whose owner cannot be reached (breaker open, call failed) is re-routed through the ring
// as it is now (the owner may have changed: the dead node's slots move), at most max_attempts
// times. While the owner's breaker is open, its checks go to a stand-in: the slot's runner-up in
// the ring, i.e. the node that will own the slot if the owner is declared dead — the same node
// for everyone, so each key is still decided in one place with its full limit. Only when the
// stand-in is unreachable too is a check decided here by the rule's degraded policy
// (LimiterService::checkDegraded). Stand-in and policy decisions are both marked degraded (made
// without the owner). A check whose slot this node now owns is decided here normally. Every
// submitted check is completed exactly once, also when the forwarder stops (then in degraded mode).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <kj/async-io.h>
#include <kj/timer.h>

#include "daemon/routing/ring_view.h"
#include "daemon/routing/route.h"
#include "daemon/routing/slot_gate.h"
#include "daemon/service/limiter_service.h"
#include "proto/rpc_tls.h"

namespace throttlex {

// A check that outlives the request that brought it: what travels to a peer.
struct ForwardedCheck {
  std::string key;
  std::string rule;
  LimitSpec limit;  // when rule is empty
  std::uint64_t hits = 1;
  std::uint32_t slot = 0;     // slotOf(rule, key)
  bool refund = false;        // gives `hits` back (CheckArgs::refund)
  std::uint64_t release = 0;  // a lease to release (CheckArgs::release)
  std::uint64_t renew = 0;    // a lease to renew (CheckArgs::renew)
  Priority priority = Priority::kNormal;
  std::optional<Instant> deadline =
      std::nullopt;  // the caller's (CheckArgs::deadline): past it, not sent
  // Wall-clock ms since the Unix epoch after which the node that sent it here may have it decided
  // elsewhere: past it, it is not decided (kNotDecided) nor sent on. 0: no bound (it entered here).
  std::int64_t decide_by_ms = 0;

  static ForwardedCheck from(const CheckArgs& args, std::uint32_t slot);
  CheckArgs args() const;  // views into this object
};

// Whether a check bounded by `decide_by_ms` (ForwardedCheck) may no longer be decided now. Reads
// `clock` only for a bounded check: checks that entered here (0) cost nothing.
inline bool pastDecideBy(std::int64_t decide_by_ms, const Clock& clock) {
  return decide_by_ms != 0 &&
         std::chrono::duration_cast<std::chrono::milliseconds>(clock.now().time_since_epoch())
                 .count() > decide_by_ms;
}

// Where results go; called once per submitted index, on the thread of the loop that forwarded it
// (the submitting thread when it has a loop of its own). Must be quick.
class ForwardSink {
 public:
  virtual ~ForwardSink() = default;
  virtual void deliver(std::size_t index, Result<CheckOutcome> outcome) = 0;
};

struct ForwarderOptions {
  // T: an owner that answered nothing (batches, heartbeats) for less than this is never decided
  // for elsewhere: its checks wait. Past it, the owner counts as down: its breaker opens and its
  // checks go to the stand-in (docs/architecture.md, "Exact whatever the timing").
  std::chrono::milliseconds owner_silence{500};
  // Every peer in the ring is sent a heartbeat (an empty batch) this often, so silence is known
  // before a check needs it.
  std::chrono::milliseconds heartbeat{50};
  // A forwarded batch tells its owner to decide nothing after (last answer + T - margin): the
  // margin covers the answer's way back and the offset between the nodes' clocks.
  std::chrono::milliseconds decide_margin{150};
  std::chrono::milliseconds connect_timeout{100};  // per connect attempt
  std::size_t max_batch = kMaxBatchChecks;
  std::chrono::milliseconds cooldown_min{200};   // breaker open for this long (jittered) ...
  std::chrono::milliseconds cooldown_max{5000};  // ... doubling while probes fail, up to this
  int max_attempts = 3;                          // owners tried per check before degraded mode
  // Reader limits for answers (a full batch of results is ~20 Ki words).
  std::uint64_t traversal_limit_words = 1024 * 1024;
  // TLS to the owners (proto/rpc_tls.h): this node's peer certificate; null: plain TCP.
  std::shared_ptr<const proto::TlsConfig> tls;
};

enum class BreakerState : std::uint8_t { kClosed = 0, kOpen = 1, kHalfOpen = 2 };
std::string_view nameOf(BreakerState s);

// Batch sizes of forwarded calls, for a histogram (bounds are upper bounds, the last is +Inf).
inline constexpr std::array<std::uint64_t, 8> kBatchSizeBounds = {1, 2, 5, 10, 50, 100, 500, 1000};
// Forward call latency bounds in seconds (the last bucket is +Inf).
inline constexpr std::array<double, 10> kForwardLatencyBounds = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1};

struct PeerStats {
  std::string node_id;
  std::string address;
  BreakerState breaker = BreakerState::kClosed;
  std::uint64_t calls = 0;     // batches sent
  std::uint64_t checks = 0;    // checks sent
  std::uint64_t failures = 0;  // failed connects and calls
  std::uint64_t breaker_opens = 0;
};

struct ForwarderStats {
  std::vector<PeerStats> peers;   // every peer forwarded to so far, by node id
  std::uint64_t degraded = 0;     // checks decided here by a rule's degraded policy
  std::uint64_t standin = 0;      // checks sent to (or decided by this node as) a stand-in owner
  std::uint64_t rerouted = 0;     // checks re-routed after a failure or a ring change
  std::uint64_t not_decided = 0;  // checks an owner answered kNotDecided (sent again)
  std::uint64_t silences = 0;     // peers found silent for owner_silence (breaker opened)
  // Checks submitted on a thread without a loop of its own, handed to the forwarder's thread
  // (parked checks released by the slot keeper; never the check path of HTTP or RPC).
  std::uint64_t handoffs = 0;
  std::array<std::uint64_t, kBatchSizeBounds.size() + 1> batch_sizes{};
  std::uint64_t batch_size_sum = 0;
  std::array<std::uint64_t, kForwardLatencyBounds.size() + 1> latency{};
  double latency_sum_seconds = 0;
};

// How a loop reaches a peer: a connected stream to "host:port" (TLS is added on top).
using PeerConnector = std::function<kj::Promise<kj::Own<kj::AsyncIoStream>>(const std::string&)>;
// Connects through a KJ network (a thread on KJ's own event loop).
PeerConnector connectorOf(kj::Network& network);

// A forwarder loop on one worker thread (Forwarder::attachThread()). Created and destroyed on that
// thread. Before destroying it, shutdown() and let the thread's KJ loop run, so that calls still
// in flight come back and their checks are answered (degraded).
class ForwarderThread {
 public:
  struct Impl;
  explicit ForwarderThread(std::unique_ptr<Impl> impl);
  ~ForwarderThread();
  ForwarderThread(const ForwarderThread&) = delete;
  ForwarderThread& operator=(const ForwarderThread&) = delete;
  void shutdown();  // queued checks answered now (degraded), calls in flight cancelled

 private:
  std::unique_ptr<Impl> impl_;
};

class Forwarder {
 public:
  // Starts the thread. `service`, `ring` and `keeper` must outlive the forwarder. `keeper`: where
  // checks of slots whose state is on the way wait (daemon/slots/slot_keeper.h); null: none.
  static Result<std::unique_ptr<Forwarder>> start(const ForwarderOptions& options,
                                                  LimiterService& service, const RingHolder& ring,
                                                  SlotGate* keeper = nullptr);
  ~Forwarder();  // stop()s
  Forwarder(const Forwarder&) = delete;
  Forwarder& operator=(const Forwarder&) = delete;

  // Any thread: forwarded by the calling thread's loop (attachThread()), else handed to the
  // forwarder's own thread. Result j goes to sink->deliver(indices[j], ...). `hops`: how many nodes
  // this check passed already (the calls carry hops + 1). After stop(), checks are decided at once
  // on the calling thread (degraded for keys owned elsewhere). `decide_by_ms`: the bound of checks
  // that came from a peer (ForwardedCheck), 0 for none.
  void submit(std::vector<ForwardedCheck> checks, std::vector<std::size_t> indices,
              std::shared_ptr<ForwardSink> sink, std::uint8_t hops, std::int64_t decide_by_ms = 0);

  // On a thread that runs a KJ event loop whose timer is `timer`: from now on, checks submitted
  // on this thread are forwarded by a loop of this thread, with connections of its own.
  std::unique_ptr<ForwarderThread> attachThread(kj::Timer& timer, PeerConnector connect);

  // Completes everything pending and joins the thread. Idempotent; any thread but the
  // forwarder's own.
  void stop();

  ForwarderStats stats() const;  // any thread

  struct Impl;

 private:
  explicit Forwarder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace throttlex

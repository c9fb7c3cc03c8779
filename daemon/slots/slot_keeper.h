// SlotKeeper: where a slot's state comes from when this node starts deciding it, and where it goes
// when this node stops (docs/persistence.md, "Recovery and handoff").
//
// Every slot has a mode, read lock-free on the hot path (Router, Forwarder):
//  - open     decided as the ring says (the normal case);
//  - parked   this node owns the slot but its state is still on the way (from Redis, or from the
//             previous owner): checks wait here (park()) until it arrived or a deadline passed;
//  - claimed  the previous owner handed the slot over before this node's ring says it owns it:
//             decide here anyway (until the ring agrees or the claim expires);
//  - moved    this node handed the slot over while still in the ring (drain): checks go to the
//             slot's runner-up, which holds the state now;
//  - proxy    this node gained the slot from a member that still decides it and has not handed it
//             over yet: checks go to that member (the slot's runner-up) until its handoff arrives
//             (no deadline: it decides them meanwhile, however long gossip takes to tell it; if it
//             leaves the ring first, the slot is read from the snapshot store instead).
//
// When state moves:
//  - start (with a snapshot store): every slot is parked and read from Redis before it is decided.
//  - a ring change: slots this node lost are handed to their new owner over RPC (parked here for
//    the moment it takes, after a grace period so that no decision made on the old view is
//    missed). Slots it gained from a member that is still there are proxied to that member until
//    its handoff arrives (it goes on deciding them meanwhile, so nothing is decided twice); slots
//    whose previous owner is gone wait (parked) for the snapshot store. Both are merged
//    (moreConsumed). A check that reaches a node which has handed its slot over is sent on to the
//    new owner past the hop limit, where it waits for the handoff in flight.
//  - drain (SIGTERM, throttlectl drain): every owned slot is handed to its runner-up, the node
//    that owns it once this one has left, and marked moved; then the node leaves.
//  - stand-in: when this node decides checks for a slot whose owner is unreachable (the
//    Forwarder's stand-in), it first reads the slot from the snapshot store (at most every
//    kStandInRefresh), so a crashed owner's keys continue from their last snapshot.
//
// Threads: one worker thread of its own runs ring changes, recoveries and handoff sends (sends
// block it, bounded by their deadline). park() and the mode reads are for any thread; receive()
// for RPC threads. Parked checks are released (handed back to whoever parked them: the Router or
// the Forwarder) on the thread that opens the slot.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "daemon/base/quiescence.h"
#include "daemon/base/slot_stats.h"
#include "daemon/routing/forwarder.h"
#include "daemon/routing/ring_view.h"
#include "daemon/routing/slot_gate.h"
#include "limiter/mutex.h"
#include "limiter/store.h"
#include "persistence/snapshot_store.h"

namespace throttlex {

// Sends a handoff to the node at `address` and waits for its answer (bounded by `timeout`).
// `slots` is set on the last call of a handoff only: the receiver opens or claims them then.
using HandoffSender = std::function<Status(
    const std::string& address, const std::string& from, std::span<const std::uint16_t> slots,
    std::span<const StoredEntry> entries, std::chrono::milliseconds timeout)>;

struct SlotKeeperOptions {
  std::string self_id;
  persistence::SnapshotStore* snapshots = nullptr;   // null: no recovery from a snapshot store
  HandoffSender send;                                // null: no handoffs (single node)
  std::chrono::milliseconds recovery_timeout{1000};  // a parked slot opens after this at the latest
  std::chrono::milliseconds startup_timeout{10'000};  // for reading every slot at start
  // Started with --join: at start every slot waits (at most this long) for the first ring with
  // other members in it. 0: a node on its own decides at once.
  std::chrono::milliseconds join_timeout{0};
  // Start-up recovery: false reads every slot at start (eager); true reads a slot when its first
  // check arrives (lazy, within recovery_timeout), batching the slots asked for meanwhile.
  bool lazy = false;
  std::chrono::milliseconds handoff_timeout{2000};  // per handoff call
  std::chrono::milliseconds claim_ttl{10'000};      // a claim the ring never confirms expires
  std::size_t entries_per_call = 20'000;            // 640 KB of entries per handoff call
};

class SlotKeeper final : public SlotGate {
 public:
  static constexpr std::chrono::milliseconds kStandInRefresh{2000};
  static constexpr std::size_t kEntryBytes = 32;  // on the wire: key hi, lo, state w0, w1 (LE)

  // `store`, `clock` must outlive the keeper. Starts the worker thread.
  SlotKeeper(SlotKeeperOptions options, Store& store, const Clock& clock);
  ~SlotKeeper();  // stop()
  SlotKeeper(const SlotKeeper&) = delete;
  SlotKeeper& operator=(const SlotKeeper&) = delete;

  // Hot path (any thread). active(): some slot is not open (else mode() is always kOpen).
  bool active() const override { return not_open_.load(std::memory_order_relaxed) != 0; }
  SlotMode mode(std::uint32_t slot) const override {
    return static_cast<SlotMode>(modes_[slot].load(std::memory_order_acquire));
  }
  bool hasSnapshots() const { return options_.snapshots != nullptr; }
  Quiescence& quiescence() override { return quiet_; }

  // A check whose slot is parked: held until the slot opens, then handed to `back` to be routed
  // again. If the slot opened meanwhile, at once.
  void park(ForwardedCheck check, std::size_t index, std::shared_ptr<ForwardSink> sink,
            std::uint8_t hops, Rerouter& back) override;
  // This node is about to decide `slot` as a stand-in (its owner elsewhere): true when the slot
  // must be read from the snapshot store first (it is parked now; park() the check).
  bool standInNeedsRecovery(std::uint32_t slot) override;
  // Proxied slots: the member that still decides `slot` (empty if it is not proxied). Locks.
  std::string proxyTarget(std::uint32_t slot) const override;
  // This node handed `slot` over within the last claim_ttl (checks for it go to the new owner).
  bool handedOver(std::uint32_t slot) const override {
    const std::int64_t at = handed_ms_[slot].load(std::memory_order_relaxed);
    return at != 0 && monotonicMs() - at < options_.claim_ttl.count();
  }

  // Start: parks every slot and reads them all from the snapshot store; with join_timeout, slots
  // also wait for the first ring of a cluster. waitStarted() returns once the snapshot is read
  // (or its deadline passed).
  void recoverAll();
  bool waitStarted(std::chrono::milliseconds timeout);

  // The cluster thread, after it published `next` (must not block: queued for the worker).
  void onRing(std::shared_ptr<const RingView> next);

  // A peer's handoff (RPC thread): merges the entries; opens or claims the listed slots.
  // `entries` is the wire form (kEntryBytes each). Returns the entries merged.
  Result<std::uint64_t> receive(const std::string& from, std::span<const std::uint16_t> slots,
                                std::span<const std::uint8_t> entries);

  // Hands every owned slot to its runner-up and marks it moved; blocks until done or `timeout`.
  // Returns the slots handed over.
  std::size_t drain(std::chrono::milliseconds timeout);

  SlotKeeperStats stats() const;
  // Returns once the worker has done everything queued before the call (what that work queues
  // in turn may still be pending); false if that took longer than `bound` or the keeper stopped.
  bool waitIdle(std::chrono::milliseconds bound);
  void stop();

  static std::vector<std::uint8_t> encode(std::span<const StoredEntry> entries);

 private:
  std::int64_t monotonicMs() const;  // the clock's monotonic reading, in ms
  // Waits for `future` until `deadline` on the clock's monotonic reading.
  template <typename Future>
  bool answeredBy(Future& future, Instant deadline) const;
  struct Parked {
    ForwardedCheck check;
    std::size_t index;
    std::shared_ptr<ForwardSink> sink;
    std::uint8_t hops;
    Rerouter* back;  // who routes it again (park())
  };
  struct Waiting {  // a parked or proxied slot: what it still waits for
    bool push = false;
    bool snapshot = false;
    bool lazy = false;  // snapshot not asked for yet: the first check asks (lazy recovery)
    Instant deadline;   // max() while proxied: the previous owner decides meanwhile
    std::string from;   // proxied: the member expected to hand the slot over
  };

  void post(std::function<void()> task);
  void run();
  void handleRing(std::shared_ptr<const RingView> next);
  // Proxied slots still this node's whose previous owner left the ring: nobody decides them any
  // more, so they wait for the snapshot store instead (added to `gained` and `from_snapshots`),
  // or, with none, open at once (returned). A previous owner still in the ring goes on deciding
  // them until it hands them over, runner-up or not. Worker thread; takes mu_.
  std::vector<std::uint32_t> unproxyGone(const RingView& next, Instant deadline,
                                         std::vector<std::uint32_t>& gained,
                                         std::vector<std::uint32_t>& from_snapshots);
  // Hands the `lost` slots (by the new owner's index in `next`) to their new owners; without
  // handoffs configured, drops their state. Worker thread.
  void sendLost(const std::map<std::uint32_t, std::vector<std::uint32_t>>& lost,
                const RingView& next);
  // Reads `slots` from the snapshot store into the store, retrying until `deadline`; marks them
  // as no longer waiting for a snapshot. Worker thread.
  void recoverFromSnapshots(const std::vector<std::uint32_t>& slots, Instant deadline);
  // Parks `slots`, waits out the grace period, takes their state out of the store and sends it to
  // `address`; `mark_moved` sets the slots moved afterwards (drain). Worker thread.
  std::size_t handOff(const std::vector<std::uint32_t>& slots, const std::string& to_id,
                      const std::string& address, bool mark_moved);
  void expireDeadlines();
  // Mode changes, under mu_.
  void setModeLocked(std::uint32_t slot, SlotMode mode);
  // Opens each slot that waits for nothing more and re-routes its parked checks.
  void openIfReady(const std::vector<std::uint32_t>& slots);
  void release(std::vector<Parked> parked);
  // Claims the slots this node's ring gives to others (their handoff came first). Any thread
  // (an RPC thread, before the handoff is answered); takes mu_.
  void claim(const std::string& from, const std::vector<std::uint32_t>& slots);
  void readLazy();  // worker: reads the slots whose first checks arrived

  const SlotKeeperOptions options_;
  Store& store_;
  const Clock& clock_;
  Quiescence quiet_;

  std::array<std::atomic<std::uint8_t>, kSlotCount> modes_{};  // written under mu_
  std::atomic<int> not_open_{0};
  std::array<std::atomic<std::int64_t>, kSlotCount> standin_read_ms_{};  // monotonic ms
  std::array<std::atomic<std::int64_t>, kSlotCount> handed_ms_{};        // monotonic ms; 0: never

  mutable Mutex mu_;
  std::map<std::uint32_t, std::vector<Parked>> parked_ GUARDED_BY(mu_);
  std::map<std::uint32_t, Waiting> waiting_ GUARDED_BY(mu_);
  std::map<std::uint32_t, Instant> claims_ GUARDED_BY(mu_);
  // Handoffs received per slot, when (an early one must not be waited for again).
  std::map<std::uint32_t, Instant> received_ GUARDED_BY(mu_);
  std::deque<std::function<void()>> tasks_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  std::condition_variable wake_;
  std::condition_variable started_cv_;
  bool started_ GUARDED_BY(mu_) = true;                    // false while recoverAll() runs
  std::vector<std::uint32_t> lazy_asked_ GUARDED_BY(mu_);  // slots whose first check arrived
  bool lazy_posted_ GUARDED_BY(mu_) = false;               // a task will read lazy_asked_

  // Written by the worker thread under mu_; read there freely, elsewhere under mu_.
  std::shared_ptr<const RingView> last_;
  std::thread thread_;

  // One atomic per row of THROTTLEX_SLOT_STATS (slots_waiting is the size of waiting_ instead).
  struct Counters {
#define THROTTLEX_SLOT_ATOMIC(field, ...) std::atomic<std::uint64_t> field{0};
    THROTTLEX_SLOT_STATS(THROTTLEX_SLOT_ATOMIC)
#undef THROTTLEX_SLOT_ATOMIC
  };
  Counters counters_;
  std::atomic<bool> draining_{false}, drained_{false};
};

}  // namespace throttlex

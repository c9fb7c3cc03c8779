// One connection of throttlex-bench: its own Client (so its own TCP connection and event-loop
// thread) sending checks on a schedule and recording what comes back.
//
// Latency is measured from the *intended* send time: in open-loop mode (a target rate) that is the
// schedule's slot, so a node that stalls shows up as latency instead of silently lowering the
// offered load (coordinated omission); in closed-loop mode it is the moment the check was sent.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <semaphore>
#include <string>

#include "bench/key_picker.h"
#include "bench/latency_histogram.h"
#include "bench/real_time.h"
#include "throttlex/client.h"

namespace throttlex::bench {

using SteadyTime = RealTime::time_point;

// The run's shape, shared by every connection; constant after main() builds it.
struct LoadPlan {
  client::CheckSpec spec;       // the limit (rule or inline); the key is filled in per check
  std::string key_prefix;       // keys are key_prefix + index
  std::size_t concurrency = 1;  // async mode: most checks outstanding per connection
  std::size_t batch = 0;        // > 0: one checkBatch of this many at a time instead
  // Open loop: time between sends (of a check, or of a batch) on one connection; 0: closed loop.
  std::chrono::nanoseconds interval{0};
  SteadyTime measure_from;  // checks intended before this are warmup: not recorded
  SteadyTime end;           // nothing is sent at or after this
};

// Measured-phase totals.
struct Tally {
  std::uint64_t allowed = 0;
  std::uint64_t limited = 0;
  std::uint64_t errors = 0;     // the client returned an error (on_unavailable = error)
  std::uint64_t fallbacks = 0;  // no node answered; on_unavailable decided
  std::uint64_t degraded = 0;   // answered, but decided in degraded mode (owner unreachable)
  std::uint64_t shed = 0;       // answered by the rule's overload policy, not decided (not in
                                // allowed/limited, nor in the latency histogram)
  std::uint64_t late = 0;       // of allowed + limited: decided after the measured window ended
  std::uint64_t shed_locally =
      0;  // of shed: answered by the client (ClientOptions::overload_throttle)
};

class LoadConnection {
 public:
  // `first_send`: when this connection's schedule starts (connections are staggered).
  LoadConnection(std::unique_ptr<client::Client> client, const LoadPlan& plan, KeyPicker picker,
                 SteadyTime first_send);
  LoadConnection(const LoadConnection&) = delete;
  LoadConnection& operator=(const LoadConnection&) = delete;

  // The connection's thread: sends until plan.end, then waits for every outstanding check (each
  // completes within the client's deadline). Call once.
  void run();

  // Safe from any thread at any time; slightly stale while run() is going.
  const LatencyHistogram& latency() const { return latency_; }
  // Open loop, measured phase: how late after its scheduled time this connection's thread woke
  // to send (the generator's own scheduling: a late wake on a busy machine is load the system
  // under test never saw on time), and how late the check was handed to the client (the wake
  // plus any wait for a free outstanding slot). Both are already inside latency().
  const LatencyHistogram& wakeLateness() const { return wake_lateness_; }
  const LatencyHistogram& sendLateness() const { return send_lateness_; }
  std::uint64_t completed() const { return completed_.load(std::memory_order_relaxed); }
  Tally tally() const;
  std::string firstError() const;
  client::ClientStats stats() const { return client_->stats(); }

 private:
  void runAsync();
  void runBatch();
  // Waits for the next open-loop slot; false when the schedule is past plan.end. Closed loop:
  // the slot is now.
  bool nextSlot(SteadyTime& intended);
  void setNextKey(std::string& key);
  // Called by the client's thread (async) or run()'s thread (batch): one writer at a time.
  void record(const client::CheckResult& r, SteadyTime intended, SteadyTime done);
  // run()'s thread, open loop: records `now - intended` in `h` for measured-phase sends.
  void recordLateness(LatencyHistogram& h, SteadyTime intended) const;

  // Constant after construction.
  const LoadPlan& plan_;

  // Used only by run()'s thread.
  KeyPicker picker_;
  SteadyTime next_send_;

  // Written by one thread at a time (see record()), read by anyone.
  LatencyHistogram latency_;
  // Written by run()'s thread only, read by anyone.
  LatencyHistogram wake_lateness_, send_lateness_;
  std::atomic<std::uint64_t> completed_{0};
  std::atomic<std::uint64_t> allowed_{0}, limited_{0}, errors_{0}, fallbacks_{0}, degraded_{0},
      shed_{0}, late_{0}, shed_locally_{0};
  std::atomic<bool> has_error_{false};
  mutable std::mutex error_mutex_;
  std::string first_error_;  // GUARDED_BY(error_mutex_)

  // Async mode: free slots for outstanding checks; released by the callbacks.
  std::counting_semaphore<> slots_;

  // Last, so that it is destroyed first: its destructor completes pending checks, whose callbacks
  // still use the members above.
  std::unique_ptr<client::Client> client_;
};

}  // namespace throttlex::bench

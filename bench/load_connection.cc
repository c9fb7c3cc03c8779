#include "bench/load_connection.h"

#include <charconv>
#include <thread>
#include <vector>

namespace throttlex::bench {
namespace {

void bump(std::atomic<std::uint64_t>& a) {  // single writer: no read-modify-write needed
  a.store(a.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

}  // namespace

LoadConnection::LoadConnection(std::unique_ptr<client::Client> client, const LoadPlan& plan,
                               KeyPicker picker, SteadyTime first_send)
    : plan_(plan),
      picker_(std::move(picker)),
      next_send_(first_send),
      slots_(static_cast<std::ptrdiff_t>(plan.concurrency)),
      client_(std::move(client)) {}

void LoadConnection::run() {
  if (plan_.batch > 0) {
    runBatch();
  } else {
    runAsync();
  }
}

bool LoadConnection::nextSlot(SteadyTime& intended) {
  if (plan_.interval.count() == 0) {
    intended = RealTime::now();
    return intended < plan_.end;
  }
  intended = next_send_;
  if (intended >= plan_.end) return false;
  next_send_ += plan_.interval;
  // Behind schedule: send at once; the lateness counts as latency.
  if (RealTime::now() < intended) std::this_thread::sleep_until(intended);
  return true;
}

void LoadConnection::setNextKey(std::string& key) {
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, picker_.next());
  key.assign(plan_.key_prefix);
  key.append(digits, end);
}

void LoadConnection::runAsync() {
  client::CheckSpec spec = plan_.spec;
  SteadyTime intended;
  while (true) {
    // Open loop: wait for the slot first, so that waiting for a free outstanding slot below is
    // measured; closed loop: take the outstanding slot first, then the send time is now.
    if (plan_.interval.count() != 0) {
      if (!nextSlot(intended)) break;
      recordLateness(wake_lateness_, intended);
      slots_.acquire();
      recordLateness(send_lateness_, intended);
    } else {
      slots_.acquire();
      if (!nextSlot(intended)) {
        slots_.release();
        break;
      }
    }
    setNextKey(spec.key);
    // {this, intended}: 16 bytes, so std::function stores it without allocating.
    client_->checkAsync(spec, [this, intended](client::CheckResult r) {
      record(r, intended, RealTime::now());
      slots_.release();
    });
  }
  for (std::size_t i = 0; i < plan_.concurrency; ++i) slots_.acquire();  // drain
}

void LoadConnection::runBatch() {
  std::vector<client::CheckSpec> specs;
  SteadyTime intended;
  while (nextSlot(intended)) {
    if (plan_.interval.count() != 0) {
      recordLateness(wake_lateness_, intended);
      recordLateness(send_lateness_, intended);  // nothing else to wait for: the call is sync
    }
    // checkBatch takes the specs by value: hand them over instead of copying, refill after.
    specs.resize(plan_.batch, plan_.spec);
    for (client::CheckSpec& spec : specs) setNextKey(spec.key);
    const std::vector<client::CheckResult> results = client_->checkBatch(std::move(specs));
    specs.clear();
    const SteadyTime done = RealTime::now();
    for (const client::CheckResult& r : results) record(r, intended, done);
  }
}

void LoadConnection::record(const client::CheckResult& r, SteadyTime intended, SteadyTime done) {
  bump(completed_);
  if (intended < plan_.measure_from) return;  // warmup
  if (!r.ok()) {
    bump(errors_);
    if (!has_error_.load(std::memory_order_relaxed)) {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (first_error_.empty()) {
        first_error_ = std::string(client::errorCodeName(r.error.code)) + ": " + r.error.message;
      }
      has_error_.store(true, std::memory_order_relaxed);
    }
    return;
  }
  if (r.fallback) {
    bump(fallbacks_);
    return;
  }
  if (r.shed != client::ShedReason::kNone) {
    bump(shed_);
    if (r.shed_locally) bump(shed_locally_);
    return;
  }
  bump(r.allowed ? allowed_ : limited_);
  if (done > plan_.end) bump(late_);
  if (r.route == client::Route::kDegraded) bump(degraded_);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(done - intended).count();
  latency_.record(static_cast<std::uint64_t>(std::max<std::int64_t>(0, ns)));
}

void LoadConnection::recordLateness(LatencyHistogram& h, SteadyTime intended) const {
  if (intended < plan_.measure_from) return;  // warmup
  const auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(RealTime::now() - intended).count();
  h.record(static_cast<std::uint64_t>(std::max<std::int64_t>(0, ns)));
}

Tally LoadConnection::tally() const {
  return {allowed_.load(std::memory_order_relaxed),  limited_.load(std::memory_order_relaxed),
          errors_.load(std::memory_order_relaxed),   fallbacks_.load(std::memory_order_relaxed),
          degraded_.load(std::memory_order_relaxed), shed_.load(std::memory_order_relaxed),
          late_.load(std::memory_order_relaxed),     shed_locally_.load(std::memory_order_relaxed)};
}

std::string LoadConnection::firstError() const {
  std::lock_guard<std::mutex> lock(error_mutex_);
  return first_error_;
}

}  // namespace throttlex::bench

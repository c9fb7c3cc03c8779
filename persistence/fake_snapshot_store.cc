#include "persistence/fake_snapshot_store.h"
#include "limiter/mutex.h"

#include <algorithm>

namespace throttlex::persistence {
namespace {

std::int64_t unixMs(const Clock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock.now().time_since_epoch())
      .count();
}

}  // namespace

FakeSnapshotStore::~FakeSnapshotStore() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  delivery_cv_.notify_all();
  if (delivery_.joinable()) delivery_.join();
}

void FakeSnapshotStore::write(std::vector<SnapshotEntry> entries, WriteCallback done) {
  {
    MutexLock lock(mu_);
    largest_write_ = std::max(largest_write_, entries.size());
  }
  submit([this, entries = std::move(entries), done = std::move(done)]() {
    Status status = Ok{};
    {
      MutexLock lock(mu_);
      ++stats_.commands;
      ++write_calls_;
      if (failure_) {
        ++stats_.errors;
        status = *failure_;
      } else {
        const std::int64_t now = unixMs(clock_);
        for (const SnapshotEntry& e : entries) {
          auto& slot = slots_[e.slot];
          if (e.expiry_ms < now) {
            slot.erase(e.key);
          } else {
            slot[e.key] = e;
          }
        }
        stats_.entries_written += entries.size();
      }
    }
    done(std::move(status));
  });
}

void FakeSnapshotStore::readSlots(std::vector<std::uint32_t> slots, ReadCallback done) {
  submit([this, slots = std::move(slots), done = std::move(done)]() {
    std::optional<Error> error;
    std::vector<SnapshotEntry> out;
    {
      MutexLock lock(mu_);
      ++stats_.commands;
      if (failure_) {
        ++stats_.errors;
        error = *failure_;
      } else {
        const std::int64_t now = unixMs(clock_);
        for (std::uint32_t s : slots) {
          auto it = slots_.find(s);
          if (it == slots_.end()) continue;
          for (const auto& [key, e] : it->second) {
            if (e.slot != s || slotOf(key) != s || e.state.empty()) {
              ++stats_.malformed;
            } else if (e.expiry_ms >= now) {
              out.push_back(e);
            }
          }
        }
        stats_.entries_read += out.size();
      }
    }
    if (error) {
      done(std::move(*error));
    } else {
      done(std::move(out));
    }
  });
}

SnapshotStoreStats FakeSnapshotStore::stats() const {
  MutexLock lock(mu_);
  SnapshotStoreStats s = stats_;
  s.connected = !failure_ || failure_->code != ErrorCode::kUnavailable;
  s.latency = latency_hist_.snapshot();
  return s;
}

void FakeSnapshotStore::submit(Op op) {
  // Every operation counts as delivered once it ran, callback included.
  op = [this, op = std::move(op)] {
    op();
    {
      MutexLock lock(mu_);
      ++delivered_;
    }
    changed_.notify_all();
  };
  {
    MutexLock lock(mu_);
    if (hold_) {
      held_.push_back(std::move(op));
      lock.unlock();
      changed_.notify_all();
      return;
    }
    if (latency_.count() > 0) {
      delayed_.emplace_back(real_.monotonic() + latency_, std::move(op));
      lock.unlock();
      delivery_cv_.notify_all();
      return;
    }
  }
  op();
}

void FakeSnapshotStore::deliveryLoop() {
  MutexLock lock(mu_);
  while (!stopping_ || !delayed_.empty()) {
    if (delayed_.empty()) {
      delivery_cv_.wait(lock.native());
      continue;
    }
    const auto due = delayed_.front().first;
    if (const Duration left = due - real_.monotonic(); !stopping_ && left > Duration(0)) {
      delivery_cv_.wait_for(lock.native(), left);
      continue;
    }
    Op op = std::move(delayed_.front().second);
    delayed_.pop_front();
    lock.unlock();
    op();  // operations complete even during destruction: every callback runs exactly once
    lock.lock();
  }
}

bool FakeSnapshotStore::waitHeld(std::size_t n, std::chrono::milliseconds bound) const {
  MutexLock lock(mu_);
  return changed_.wait_for(lock.native(), bound, [&]() REQUIRES(mu_) { return held_.size() >= n; });
}

bool FakeSnapshotStore::waitDelivered(std::uint64_t n, std::chrono::milliseconds bound) const {
  MutexLock lock(mu_);
  return changed_.wait_for(lock.native(), bound, [&]() REQUIRES(mu_) { return delivered_ >= n; });
}

void FakeSnapshotStore::setFailure(std::optional<Error> error) {
  MutexLock lock(mu_);
  failure_ = std::move(error);
}

void FakeSnapshotStore::setHold(bool hold) {
  MutexLock lock(mu_);
  hold_ = hold;
}

std::size_t FakeSnapshotStore::release() {
  std::deque<Op> ops;
  {
    MutexLock lock(mu_);
    ops.swap(held_);
  }
  for (Op& op : ops) op();
  return ops.size();
}

void FakeSnapshotStore::setLatency(std::chrono::nanoseconds latency) {
  MutexLock lock(mu_);
  latency_ = latency;
  if (latency.count() > 0 && !delivery_.joinable()) {
    delivery_ = std::thread([this] { deliveryLoop(); });
  }
}

std::optional<SnapshotEntry> FakeSnapshotStore::get(const KeyHash& key) const {
  MutexLock lock(mu_);
  for (const auto& [slot, entries] : slots_) {
    auto it = entries.find(key);
    if (it != entries.end()) return it->second;
  }
  return std::nullopt;
}

std::size_t FakeSnapshotStore::size() const {
  MutexLock lock(mu_);
  std::size_t n = 0;
  for (const auto& [slot, entries] : slots_) n += entries.size();
  return n;
}

void FakeSnapshotStore::plant(const SnapshotEntry& entry) {
  MutexLock lock(mu_);
  slots_[entry.slot][entry.key] = entry;
}

std::uint64_t FakeSnapshotStore::writeCalls() const {
  MutexLock lock(mu_);
  return write_calls_;
}

std::size_t FakeSnapshotStore::largestWrite() const {
  MutexLock lock(mu_);
  return largest_write_;
}

}  // namespace throttlex::persistence

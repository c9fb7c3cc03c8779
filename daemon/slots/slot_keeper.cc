#include "daemon/slots/slot_keeper.h"

#include <algorithm>
#include <cstring>
#include <future>

#include "daemon/base/log.h"
#include "limiter/mutex.h"
#include "persistence/merge.h"

namespace throttlex {
namespace {

constexpr std::size_t kSlotsPerRead = 256;  // slots per snapshot read (one HGETALL each)
constexpr auto kRetryPause = std::chrono::milliseconds(50);
constexpr int kHandoffAttempts = 3;

void putLe(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint64_t getLe(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::int64_t unixMs(Time t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

State mergeStates(const State& a, const State& b) {
  return persistence::moreConsumed(a, b);
}

bool isMember(const RingView& view, const std::string& id) {
  const auto& m = view.ring.members();
  return std::find(m.begin(), m.end(), id) != m.end();
}

}  // namespace

std::int64_t SlotKeeper::monotonicMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             clock_.monotonic().time_since_epoch())
      .count();
}

SlotKeeper::SlotKeeper(SlotKeeperOptions options, Store& store, const Clock& clock)
    : options_(std::move(options)), store_(store), clock_(clock) {
  thread_ = std::thread([this] { run(); });
}

SlotKeeper::~SlotKeeper() {
  stop();
}

void SlotKeeper::stop() {
  std::vector<Parked> left;
  {
    MutexLock guard(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Whatever still waits is decided now, on the state there is.
  std::vector<std::uint32_t> slots;
  {
    MutexLock guard(mu_);
    for (const auto& [slot, w] : waiting_) slots.push_back(slot);
    waiting_.clear();
  }
  openIfReady(slots);
}

std::vector<std::uint8_t> SlotKeeper::encode(std::span<const StoredEntry> entries) {
  std::vector<std::uint8_t> out(entries.size() * kEntryBytes);
  std::uint8_t* p = out.data();
  for (const StoredEntry& e : entries) {
    putLe(p, e.key.hi);
    putLe(p + 8, e.key.lo);
    putLe(p + 16, e.state.w0);
    putLe(p + 24, e.state.w1);
    p += kEntryBytes;
  }
  return out;
}

void SlotKeeper::post(std::function<void()> task) {
  {
    MutexLock guard(mu_);
    if (stopping_) return;
    tasks_.push_back(std::move(task));
  }
  wake_.notify_all();
}

bool SlotKeeper::waitIdle(std::chrono::milliseconds bound) {
  auto reached = std::make_shared<std::promise<void>>();
  auto future = reached->get_future();
  post([reached] { reached->set_value(); });
  return future.wait_for(bound) == std::future_status::ready;
}

void SlotKeeper::run() {
  MutexLock lock(mu_);
  while (!stopping_) {
    if (!tasks_.empty()) {
      auto task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      task();
      lock.lock();
      continue;
    }
    // Deadlines of parked slots and claims are checked every few tens of ms while there are any.
    if (waiting_.empty() && claims_.empty() && received_.empty()) {
      wake_.wait(lock.native());
    } else {
      wake_.wait_for(lock.native(), std::chrono::milliseconds(20));
    }
    lock.unlock();
    expireDeadlines();
    lock.lock();
  }
}

void SlotKeeper::setModeLocked(std::uint32_t slot, SlotMode mode) {
  const auto before = static_cast<SlotMode>(modes_[slot].load(std::memory_order_relaxed));
  if (before == mode) return;
  if (before == SlotMode::kOpen) not_open_.fetch_add(1, std::memory_order_relaxed);
  if (mode == SlotMode::kOpen) not_open_.fetch_sub(1, std::memory_order_relaxed);
  modes_[slot].store(static_cast<std::uint8_t>(mode), std::memory_order_release);
}

void SlotKeeper::park(ForwardedCheck check, std::size_t index, std::shared_ptr<ForwardSink> sink,
                      std::uint8_t hops, Rerouter& back) {
  {
    MutexLock guard(mu_);
    const SlotMode m = mode(check.slot);
    if ((m == SlotMode::kParked || m == SlotMode::kProxy) && !stopping_) {
      const std::uint32_t slot = check.slot;
      parked_[slot].push_back({std::move(check), index, std::move(sink), hops, &back});
      counters_.parked_now.fetch_add(1, std::memory_order_relaxed);
      counters_.parked_total.fetch_add(1, std::memory_order_relaxed);
      auto w = waiting_.find(slot);
      if (w != waiting_.end() && w->second.lazy) {  // its first check: read it now
        w->second.lazy = false;
        w->second.deadline =
            std::min(w->second.deadline, clock_.monotonic() + options_.recovery_timeout);
        lazy_asked_.push_back(slot);
        if (!std::exchange(lazy_posted_, true)) {
          tasks_.push_back([this] { readLazy(); });
          wake_.notify_all();
        }
      }
      return;
    }
  }
  std::vector<Parked> now;
  now.push_back({std::move(check), index, std::move(sink), hops, &back});
  release(std::move(now));
}

void SlotKeeper::release(std::vector<Parked> parked) {
  for (Parked& p : parked) p.back->reroute(std::move(p.check), p.index, std::move(p.sink), p.hops);
}

void SlotKeeper::openIfReady(const std::vector<std::uint32_t>& slots) {
  std::vector<Parked> ready;
  {
    MutexLock guard(mu_);
    for (std::uint32_t s : slots) {
      auto w = waiting_.find(s);
      if (w != waiting_.end() && (w->second.push || w->second.snapshot)) continue;
      if (w != waiting_.end()) waiting_.erase(w);
      if (mode(s) == SlotMode::kParked || mode(s) == SlotMode::kProxy) {
        setModeLocked(s, SlotMode::kOpen);
      }
      auto p = parked_.find(s);
      if (p == parked_.end()) continue;
      counters_.parked_now.fetch_sub(p->second.size(), std::memory_order_relaxed);
      for (Parked& c : p->second) ready.push_back(std::move(c));
      parked_.erase(p);
    }
  }
  release(std::move(ready));
}

void SlotKeeper::expireDeadlines() {
  const auto now = clock_.monotonic();
  std::vector<std::uint32_t> expired;
  {
    MutexLock guard(mu_);
    for (auto& [slot, w] : waiting_) {
      if (now < w.deadline) continue;
      w.push = w.snapshot = false;
      expired.push_back(slot);
    }
    for (auto it = received_.begin(); it != received_.end();) {
      it = now - it->second > options_.claim_ttl ? received_.erase(it) : std::next(it);
    }
    for (auto it = claims_.begin(); it != claims_.end();) {
      if (now < it->second) {
        ++it;
        continue;
      }
      if (mode(it->first) == SlotMode::kClaimed) setModeLocked(it->first, SlotMode::kOpen);
      it = claims_.erase(it);
    }
  }
  if (expired.empty()) return;
  counters_.recovery_timeouts.fetch_add(expired.size(), std::memory_order_relaxed);
  logWarn("slots: " + std::to_string(expired.size()) +
          " slots opened by their deadline before all their state arrived");
  // The previous owner went on deciding them until now: its latest snapshot is fresher than
  // the one read when the slots were gained.
  if (options_.snapshots != nullptr) {
    {
      MutexLock guard(mu_);
      for (std::uint32_t s : expired)
        waiting_[s] = Waiting{false, true, false, now + options_.recovery_timeout, {}};
    }
    recoverFromSnapshots(expired, now + options_.recovery_timeout);
    return;
  }
  openIfReady(expired);
}

bool SlotKeeper::standInNeedsRecovery(std::uint32_t slot) {
  if (options_.snapshots == nullptr) return false;
  const std::int64_t now = monotonicMs();
  std::int64_t last = standin_read_ms_[slot].load(std::memory_order_relaxed);
  if (last != 0 && now - last < kStandInRefresh.count()) return mode(slot) == SlotMode::kParked;
  if (!standin_read_ms_[slot].compare_exchange_strong(last, now)) {
    return mode(slot) == SlotMode::kParked;
  }
  {
    MutexLock guard(mu_);
    if (mode(slot) != SlotMode::kOpen) return mode(slot) == SlotMode::kParked;
    Waiting& w = waiting_[slot];
    w.snapshot = true;
    w.deadline = clock_.monotonic() + options_.recovery_timeout;
    setModeLocked(slot, SlotMode::kParked);
  }
  post([this, slot] {
    recoverFromSnapshots({slot}, clock_.monotonic() + options_.recovery_timeout);
  });
  return true;
}

void SlotKeeper::readLazy() {
  std::vector<std::uint32_t> slots;
  {
    MutexLock guard(mu_);
    slots.swap(lazy_asked_);
    lazy_posted_ = false;
  }
  recoverFromSnapshots(slots, clock_.monotonic() + options_.recovery_timeout);
}

void SlotKeeper::recoverAll() {
  const bool joining = options_.join_timeout.count() > 0;
  if (options_.snapshots == nullptr && !joining) return;
  const bool lazy = options_.lazy && options_.snapshots != nullptr;
  std::vector<std::uint32_t> all(kSlotCount);
  // Every slot at once (about 1 s per million keys here): the node is not ready meanwhile.
  const auto deadline =
      clock_.monotonic() + std::max(options_.recovery_timeout, options_.startup_timeout);
  {
    MutexLock guard(mu_);
    started_ = options_.snapshots == nullptr || lazy;
    for (std::uint32_t s = 0; s < kSlotCount; ++s) {
      all[s] = s;
      Waiting& w = waiting_[s];
      w.snapshot = options_.snapshots != nullptr;
      w.lazy = lazy;
      // A node that joins a cluster decides nothing before it knows the cluster: alone, it
      // would take itself for the owner of every slot while the members decide them too.
      w.push = joining;
      w.deadline = joining ? clock_.monotonic() + options_.join_timeout
                   : lazy  ? Instant::max()  // until its first check asks
                           : deadline;
      setModeLocked(s, SlotMode::kParked);
    }
  }
  if (options_.snapshots == nullptr || lazy) return;
  post([this, all = std::move(all), deadline] {
    recoverFromSnapshots(all, deadline);
    {
      MutexLock guard(mu_);
      started_ = true;
    }
    started_cv_.notify_all();
  });
}

bool SlotKeeper::waitStarted(std::chrono::milliseconds timeout) {
  MutexLock lock(mu_);
  return started_cv_.wait_for(lock.native(), timeout,
                              [this]() REQUIRES(mu_) { return started_ || stopping_; });
}

template <typename Future>
bool SlotKeeper::answeredBy(Future& future, Instant deadline) const {
  for (Instant now = clock_.monotonic(); now < deadline; now = clock_.monotonic()) {
    const Duration slice = std::min<Duration>(deadline - now, kRetryPause);
    if (future.wait_for(slice) == std::future_status::ready) return true;
    MutexLock lock(mu_);
    if (stopping_) return false;  // stop() does not wait for the store's deadline
  }
  return future.wait_for(Duration(0)) == std::future_status::ready;
}

void SlotKeeper::recoverFromSnapshots(const std::vector<std::uint32_t>& slots, Instant deadline) {
  persistence::SnapshotStore* snapshots = options_.snapshots;
  if (snapshots == nullptr || slots.empty()) return;
  std::size_t entries = 0;
  for (std::size_t first = 0; first < slots.size(); first += kSlotsPerRead) {
    std::vector<std::uint32_t> chunk(
        slots.begin() + static_cast<std::ptrdiff_t>(first),
        slots.begin() + static_cast<std::ptrdiff_t>(std::min(slots.size(), first + kSlotsPerRead)));
    bool done = false;
    while (!done && clock_.monotonic() < deadline) {
      auto answer =
          std::make_shared<std::promise<Result<std::vector<persistence::SnapshotEntry>>>>();
      auto future = answer->get_future();
      snapshots->readSlots(chunk, [answer](Result<std::vector<persistence::SnapshotEntry>> r) {
        answer->set_value(std::move(r));
      });
      // The store's own deadline ends the wait; this is the bound behind it, watched on the
      // injected clock a slice at a time.
      if (!answeredBy(future, deadline)) break;
      auto r = future.get();
      if (!r) {
        counters_.recovery_errors.fetch_add(1, std::memory_order_relaxed);
        MutexLock lock(mu_);  // a pause that stop() can cut short
        wake_.wait_for(lock.native(), kRetryPause, [this]() REQUIRES(mu_) { return stopping_; });
        if (stopping_) return;
        continue;
      }
      const Time now = clock_.now();
      for (const auto& e : *r) {
        if (plausibleAt(e.state, unixMs(now))) {
          store_.merge(e.key, e.state, now, &mergeStates);
        } else {
          counters_.implausible.fetch_add(1, std::memory_order_relaxed);
        }
      }
      entries += r->size();
      done = true;
    }
    if (!done) {
      // Past the deadline: what did not arrive is decided without it from now on.
      std::vector<std::uint32_t> rest(slots.begin() + static_cast<std::ptrdiff_t>(first),
                                      slots.end());
      {
        MutexLock guard(mu_);
        for (std::uint32_t s : rest) {
          auto w = waiting_.find(s);
          if (w != waiting_.end()) w->second.snapshot = false;
        }
      }
      counters_.recovery_timeouts.fetch_add(rest.size(), std::memory_order_relaxed);
      logWarn("slots: " + std::to_string(rest.size()) +
              " slots not read from the snapshot store by their deadline");
      openIfReady(rest);
      break;
    }
    counters_.recoveries.fetch_add(chunk.size(), std::memory_order_relaxed);
    {
      MutexLock guard(mu_);
      for (std::uint32_t s : chunk) {
        auto w = waiting_.find(s);
        if (w != waiting_.end()) w->second.snapshot = false;
      }
    }
    openIfReady(chunk);
  }
  counters_.recovered_entries.fetch_add(entries, std::memory_order_relaxed);
}

void SlotKeeper::onRing(std::shared_ptr<const RingView> next) {
  post([this, next = std::move(next)] { handleRing(next); });
}

void SlotKeeper::handleRing(std::shared_ptr<const RingView> next) {
  if (!next || next->ring.members().empty() || draining_.load()) return;
  std::shared_ptr<const RingView> prev;
  {
    MutexLock guard(mu_);  // claim() reads it on RPC threads
    prev = std::exchange(last_, next);
  }
  const bool multi = next->ring.members().size() > 1;
  const bool prev_multi = prev && prev->ring.members().size() > 1;
  const std::string& self = options_.self_id;
  const auto ownsNow = [&](std::uint32_t s) { return !multi || next->ring.ownerOf(s) == self; };
  const auto ownedBefore = [&](std::uint32_t s) {
    return !prev_multi || prev->ring.ownerOf(s) == self;
  };

  std::map<std::uint32_t, std::vector<std::uint32_t>> lost;  // by new owner's index
  std::vector<std::uint32_t> gained, from_snapshots;
  const auto deadline = clock_.monotonic() + options_.recovery_timeout;
  {
    MutexLock guard(mu_);
    for (std::uint32_t s = 0; s < kSlotCount; ++s) {
      const bool now_mine = ownsNow(s);
      if (ownedBefore(s) && !now_mine) {
        lost[next->ring.ownerIndex(s)].push_back(s);
        continue;
      }
      // First view of a cluster: whoever served the slot before this node joined is its owner
      // without this node, the runner-up.
      const bool gain = now_mine && multi && (!prev_multi || !ownedBefore(s));
      if (!gain) continue;
      if (mode(s) == SlotMode::kClaimed) {  // its handoff arrived before this ring
        setModeLocked(s, SlotMode::kOpen);
        claims_.erase(s);
        continue;
      }
      handed_ms_[s].store(0, std::memory_order_relaxed);
      const std::uint32_t runner_up = next->ring.runnerUpIndex(s);
      const std::string& previous =
          prev_multi ? prev->ring.ownerOf(s) : next->ring.members()[runner_up];
      const bool pushed = received_.count(s) != 0;  // its handoff came before this ring
      const bool push =
          !pushed && previous != self && isMember(*next, previous) && options_.send != nullptr;
      const bool snapshot = options_.snapshots != nullptr;
      if (!push && !snapshot) continue;
      Waiting& w = waiting_[s];
      w.push = push;  // replaces what it waited for before this ring (the join, at start)
      w.snapshot = w.snapshot || snapshot;
      // The previous owner goes on deciding the slot until it hands it over: checks go there
      // (proxyTarget()). Without a previous owner to ask, they wait here for the snapshot.
      const bool proxy = push;
      w.deadline = proxy ? Instant::max() : std::max(w.deadline, deadline);
      w.from = proxy ? previous : std::string();
      setModeLocked(s, proxy ? SlotMode::kProxy : SlotMode::kParked);
      gained.push_back(s);
      if (snapshot) from_snapshots.push_back(s);
    }
  }
  const std::vector<std::uint32_t> unproxied = unproxyGone(*next, deadline, gained, from_snapshots);
  openIfReady(unproxied);
  if (!gained.empty() || !lost.empty()) {
    std::size_t lost_count = 0;
    for (const auto& [owner, slots] : lost) lost_count += slots.size();
    logInfo("slots: ring of " + std::to_string(next->ring.members().size()) + " members: gained " +
            std::to_string(gained.size()) + ", handing off " + std::to_string(lost_count));
  }
  sendLost(lost, *next);  // first: the new owners are waiting (parked) for it
  recoverFromSnapshots(from_snapshots, deadline);
}

std::vector<std::uint32_t> SlotKeeper::unproxyGone(const RingView& next, Instant deadline,
                                                   std::vector<std::uint32_t>& gained,
                                                   std::vector<std::uint32_t>& from_snapshots) {
  const bool multi = next.ring.members().size() > 1;
  std::vector<std::uint32_t> unproxied;  // nothing to wait for: open at once
  MutexLock guard(mu_);
  for (auto& [s, w] : waiting_) {
    if (w.from.empty() || mode(s) != SlotMode::kProxy) continue;
    if (multi && next.ring.ownerOf(s) != options_.self_id) continue;  // not ours any more
    if (isMember(next, w.from)) continue;
    w.from.clear();
    w.push = false;
    w.snapshot = options_.snapshots != nullptr;
    w.deadline = deadline;
    setModeLocked(s, SlotMode::kParked);
    (w.snapshot ? from_snapshots : unproxied).push_back(s);
    gained.push_back(s);
  }
  return unproxied;
}

void SlotKeeper::sendLost(const std::map<std::uint32_t, std::vector<std::uint32_t>>& lost,
                          const RingView& next) {
  if (options_.send != nullptr) {
    for (const auto& [owner, slots] : lost) {
      handOff(slots, next.ring.members()[owner], next.rpc_address[owner], false);
    }
    return;
  }
  if (next.ring.members().size() < 2) return;
  // No handoffs configured: what this node no longer owns only takes memory.
  SlotSet set;
  for (const auto& [owner, slots] : lost) {
    for (std::uint32_t s : slots) set.set(s);
  }
  store_.collect(set, clock_.now(), true);
}

std::size_t SlotKeeper::handOff(const std::vector<std::uint32_t>& slots, const std::string& to_id,
                                const std::string& address, bool mark_moved) {
  if (slots.empty()) return 0;
  {
    MutexLock guard(mu_);
    for (std::uint32_t s : slots) {
      if (mode(s) != SlotMode::kMoved) setModeLocked(s, SlotMode::kParked);
      claims_.erase(s);
      waiting_.erase(s);  // a slot given away waits for nothing any more
    }
  }
  // Every decision made on the slot's old mode is in the store once this returns.
  quiet_.wait();
  SlotSet set;
  for (std::uint32_t s : slots) set.set(s);
  const std::vector<StoredEntry> entries = store_.collect(set, clock_.now(), true);
  std::vector<std::uint16_t> slot_list(slots.begin(), slots.end());
  const std::int64_t handed_at = monotonicMs();
  for (std::uint32_t s : slots) handed_ms_[s].store(handed_at, std::memory_order_relaxed);

  bool ok = true;
  const std::size_t per_call = std::max<std::size_t>(1, options_.entries_per_call);
  for (std::size_t first = 0; ok && (first < entries.size() || first == 0); first += per_call) {
    const std::size_t end = std::min(entries.size(), first + per_call);
    const bool last = end == entries.size();
    const std::span<const StoredEntry> part(entries.data() + first, end - first);
    // A few tries: the receiver decides nothing of these slots until they arrive (or its
    // deadline passes), and merging makes a repeated part harmless.
    Status sent = Ok{};
    for (int attempt = 1; attempt <= kHandoffAttempts; ++attempt) {
      sent = options_.send(
          address, options_.self_id,
          last ? std::span<const std::uint16_t>(slot_list) : std::span<const std::uint16_t>(), part,
          options_.handoff_timeout);
      if (sent) break;
      counters_.handoff_failures.fetch_add(1, std::memory_order_relaxed);
      logWarn("slots: handoff of " + std::to_string(slots.size()) + " slots to " + to_id + " at " +
              address + " failed (try " + std::to_string(attempt) + " of " +
              std::to_string(kHandoffAttempts) + "): " + sent.error().message);
    }
    ok = static_cast<bool>(sent);
    if (last) break;
  }
  if (ok) {
    counters_.handoffs_sent.fetch_add(1, std::memory_order_relaxed);
    counters_.handoff_entries_sent.fetch_add(entries.size(), std::memory_order_relaxed);
  } else {
    // Keep the state here: the new owner recovers from the snapshot store, and if the slots come
    // back, nothing was lost.
    const Time now = clock_.now();
    for (const StoredEntry& e : entries) store_.merge(e.key, e.state, now, &mergeStates);
    for (std::uint32_t s : slots) handed_ms_[s].store(0, std::memory_order_relaxed);
  }
  {
    MutexLock guard(mu_);
    for (std::uint32_t s : slots) {
      if (mode(s) == SlotMode::kParked) {
        setModeLocked(s, mark_moved && ok ? SlotMode::kMoved : SlotMode::kOpen);
      }
    }
  }
  openIfReady(slots);  // re-routes what parked meanwhile (to the new owner, by the ring)
  return ok ? slots.size() : 0;
}

Result<std::uint64_t> SlotKeeper::receive(const std::string& from,
                                          std::span<const std::uint16_t> slots,
                                          std::span<const std::uint8_t> entries) {
  if (entries.size() % kEntryBytes != 0) {
    return invalidArgument("handoff entries must be a multiple of 32 bytes");
  }
  const Time now = clock_.now();
  std::uint64_t merged = 0, malformed = 0;
  for (std::size_t off = 0; off < entries.size(); off += kEntryBytes) {
    const std::uint8_t* p = entries.data() + off;
    const KeyHash key{getLe(p), getLe(p + 8)};
    const State state{getLe(p + 16), getLe(p + 24)};
    if ((key.hi == 0 && key.lo == 0) || !plausibleAt(state, unixMs(now))) {
      ++malformed;
      continue;
    }
    store_.merge(key, state, now, &mergeStates);
    ++merged;
  }
  counters_.handoff_entries_received.fetch_add(merged, std::memory_order_relaxed);
  counters_.malformed_received.fetch_add(malformed, std::memory_order_relaxed);
  if (slots.empty()) return merged;

  counters_.handoffs_received.fetch_add(1, std::memory_order_relaxed);
  std::vector<std::uint32_t> opened, others;
  {
    MutexLock guard(mu_);
    const auto at = clock_.monotonic();
    for (std::uint16_t s16 : slots) {
      const std::uint32_t s = s16;
      if (s >= kSlotCount) continue;
      received_[s] = at;
      auto w = waiting_.find(s);
      if (w != waiting_.end() && w->second.push) {  // this node owns it and waited for this
        w->second.push = false;
        opened.push_back(s);
      } else {
        others.push_back(s);
      }
    }
  }
  wake_.notify_all();
  openIfReady(opened);
  // Claimed before the answer goes back: the sender passes checks of these slots on to this node
  // as soon as it has the answer, and they must be decided here, not sent back to it.
  claim(from, others);
  logInfo("slots: handoff from " + from + ": " + std::to_string(slots.size()) + " slots, " +
          std::to_string(merged) + " entries in the last part");
  return merged;
}

std::size_t SlotKeeper::drain(std::chrono::milliseconds timeout) {
  if (options_.send == nullptr || draining_.exchange(true)) return 0;
  auto result = std::make_shared<std::promise<std::size_t>>();
  auto future = result->get_future();
  post([this, result] {
    std::size_t handed = 0;
    const std::shared_ptr<const RingView> view = last_;
    if (view && view->ring.members().size() > 1) {
      // Owned slots go to their runner-up (their owner once this node has left); claimed ones
      // back to their owner by the ring.
      std::map<std::uint32_t, std::vector<std::uint32_t>> owned, claimed;
      for (std::uint32_t s = 0; s < kSlotCount; ++s) {
        const std::uint32_t owner = view->ring.ownerIndex(s);
        if (owner == view->self) {
          owned[view->ring.runnerUpIndex(s)].push_back(s);
        } else if (mode(s) == SlotMode::kClaimed) {
          claimed[owner].push_back(s);
        }
      }
      for (const auto& [target, slots] : owned) {
        if (target == view->self) continue;
        handed += handOff(slots, view->ring.members()[target], view->rpc_address[target], true);
      }
      for (const auto& [target, slots] : claimed) {
        handed += handOff(slots, view->ring.members()[target], view->rpc_address[target], false);
      }
    }
    drained_ = true;
    result->set_value(handed);
  });
  if (future.wait_for(timeout) != std::future_status::ready) return 0;
  return future.get();
}

void SlotKeeper::claim(const std::string& from, const std::vector<std::uint32_t>& slots) {
  if (slots.empty()) return;
  std::size_t claimed = 0;
  {
    MutexLock guard(mu_);
    const std::shared_ptr<const RingView>& view = last_;
    if (!view || view->ring.members().size() <= 1) return;  // everything is this node's anyway
    for (std::uint32_t s : slots) {
      if (view->ring.ownerIndex(s) == view->self) continue;  // ours by the ring: decided here
      if (mode(s) != SlotMode::kOpen && mode(s) != SlotMode::kMoved) continue;
      // Only the owner by this node's ring (or a sender it does not know yet) hands over what
      // this ring has not caught up with; anything else (a newcomer's partial view handing back
      // what it read at start) is merged, not claimed.
      const std::string& owner = view->ring.ownerOf(s);
      if (owner != from && isMember(*view, from)) continue;
      // Not (yet) ours by this node's ring: decide it here anyway; the sender forwards it here.
      setModeLocked(s, SlotMode::kClaimed);
      claims_[s] = clock_.monotonic() + options_.claim_ttl;
      ++claimed;
    }
  }
  counters_.claims.fetch_add(claimed, std::memory_order_relaxed);
}

std::string SlotKeeper::proxyTarget(std::uint32_t slot) const {
  MutexLock guard(mu_);
  const auto w = waiting_.find(slot);
  return w != waiting_.end() ? w->second.from : std::string();
}

SlotKeeperStats SlotKeeper::stats() const {
  SlotKeeperStats s;
#define THROTTLEX_SLOT_READ(field, ...) s.field = counters_.field.load(std::memory_order_relaxed);
  THROTTLEX_SLOT_STATS(THROTTLEX_SLOT_READ)
#undef THROTTLEX_SLOT_READ
  {
    MutexLock guard(mu_);
    s.slots_waiting = waiting_.size();
  }
  s.draining = draining_.load();
  s.drained = drained_.load();
  return s;
}

}  // namespace throttlex

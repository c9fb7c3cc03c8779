// Exact integer decisions of concurrency limits (limiter/lease.h has the layout).
#include "limiter/lease.h"

#include <algorithm>
#include <iterator>

namespace throttlex {
namespace {

constexpr std::int64_t kNsPerMs = 1'000'000;
constexpr int kGenerations = 4;
constexpr std::uint64_t kLeaseFlag = std::uint64_t{1} << 17;
constexpr std::uint64_t kReleasedFlag = std::uint64_t{1} << 16;
constexpr std::uint64_t kUnitsMask = 0xFFFF;
constexpr std::uint64_t kTag = std::uint64_t{static_cast<std::uint8_t>(Algorithm::kConcurrency)}
                               << 61;

std::int64_t generationMs(const Limit& limit) {
  const std::int64_t period_ms = limit.periodNs() / kNsPerMs;
  return std::max<std::int64_t>(1, (period_ms + 2) / 3);
}

std::uint64_t header(std::int64_t expiry_ms) {
  return kTag | (static_cast<std::uint64_t>(expiry_ms) & State::kExpiryMask) << 18;
}

// A counter decoded at `now`: counts[i] belongs to generation `newest - i`; generations that have
// expired by `now` are dropped, and `newest` is now's generation when anything was shifted.
struct Counter {
  std::int64_t newest = 0;  // generation index
  std::uint64_t counts[kGenerations] = {};

  std::uint64_t held() const {
    std::uint64_t sum = 0;
    for (const std::uint64_t c : counts) sum += c;
    return sum;
  }
};

Counter decodeCounter(const State& s, std::int64_t g_ms) {
  Counter c;
  if (s.empty() || s.tag() != Algorithm::kConcurrency || isLeaseEntry(s)) return c;
  c.newest = s.expiryMs() / g_ms - kGenerations;
  for (int i = 0; i < kGenerations; ++i) c.counts[i] = (s.w1 >> (16 * i)) & kUnitsMask;
  return c;
}

// Moves the counter's newest generation up to `gen`, dropping the generations that fall off.
void advance(Counter& c, std::int64_t gen) {
  if (gen <= c.newest) return;
  const std::int64_t shift = gen - c.newest;
  std::uint64_t moved[kGenerations] = {};
  for (int i = 0; i + shift < kGenerations; ++i) moved[i + shift] = c.counts[i];
  std::copy(std::begin(moved), std::end(moved), std::begin(c.counts));
  c.newest = gen;
}

State encodeCounter(const Counter& c, std::int64_t g_ms) {
  // The stored newest generation is the newest that holds anything (the state is neutral after
  // its expiry); a counter that holds nothing keeps now's generation and expires with it.
  int first = 0;
  while (first < kGenerations - 1 && c.counts[first] == 0) ++first;
  if (c.counts[first] == 0) first = 0;
  State s;
  s.w0 = header((c.newest - first + kGenerations) * g_ms);
  for (int k = first; k < kGenerations; ++k) {
    s.w1 |= (c.counts[k] & kUnitsMask) << (16 * (k - first));
  }
  return s;
}

std::int64_t nowMs(std::int64_t now_ns) {
  return now_ns / kNsPerMs;
}

}  // namespace

std::string_view leaseReleaseName(LeaseRelease r) {
  switch (r) {
    case LeaseRelease::kReleased:
      return "released";
    case LeaseRelease::kUnknown:
      return "unknown";
    case LeaseRelease::kExpired:
      return "expired";
    case LeaseRelease::kAlreadyReleased:
      return "already_released";
  }
  return "unknown";
}

std::string_view leaseRenewalName(LeaseRenewal r) {
  switch (r) {
    case LeaseRenewal::kRenewed:
      return "renewed";
    case LeaseRenewal::kUnknown:
      return "unknown";
    case LeaseRenewal::kExpired:
      return "expired";
    case LeaseRenewal::kReleased:
      return "released";
  }
  return "unknown";
}

std::string formatLeaseId(std::uint64_t id) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (std::size_t i = 16; i-- > 0; id >>= 4) out[i] = kHex[id & 0xF];
  return out;
}

std::optional<std::uint64_t> parseLeaseId(std::string_view text) {
  if (text.empty() || text.size() > 16) return std::nullopt;
  std::uint64_t id = 0;
  for (const char c : text) {
    int v = -1;
    if (c >= '0' && c <= '9') v = c - '0';
    if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
    if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
    if (v < 0) return std::nullopt;
    id = id << 4 | static_cast<std::uint64_t>(v);
  }
  if (id == 0) return std::nullopt;
  return id;
}

KeyHash leaseKey(const KeyHash& key, std::uint64_t id) {
  // splitmix64 finaliser over (key, id): any change of either changes every bit; the slot bits
  // (the top 12 of lo) are the key's.
  auto mix = [](std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  constexpr std::uint64_t kSlotMask = ~std::uint64_t{0} << kSlotShift;
  const std::uint64_t hi = mix(key.hi ^ mix(id ^ 0x9e3779b97f4a7c15ULL));
  const std::uint64_t lo = mix(key.lo + mix(id + hi));
  return {hi, (lo & ~kSlotMask) | (key.lo & kSlotMask) | 1};  // lo never 0
}

std::int64_t leaseExpiryMs(const Limit& limit, Time now) {
  const std::int64_t g_ms = generationMs(limit);
  const std::int64_t now_ms =
      std::clamp<std::int64_t>(now.time_since_epoch().count() / kNsPerMs, 0, kMaxTimeNs / kNsPerMs);
  return (now_ms / g_ms + kGenerations) * g_ms;
}

State leaseEntry(std::int64_t expiry_ms, std::uint64_t id, std::uint64_t units) {
  return {header(expiry_ms) | kLeaseFlag | (units & kUnitsMask), id};
}

bool isLeaseEntry(const State& state) {
  return state.tag() == Algorithm::kConcurrency && (state.w0 & kLeaseFlag) != 0;
}

LeaseRelease releaseEntry(State& lease, std::uint64_t id, std::int64_t now_ms, std::uint64_t& units,
                          std::int64_t& expiry_ms) {
  if (!isLeaseEntry(lease) || lease.w1 != id) return LeaseRelease::kUnknown;
  if (lease.expiryMs() <= now_ms) return LeaseRelease::kExpired;
  if ((lease.w0 & kReleasedFlag) != 0) return LeaseRelease::kAlreadyReleased;
  units = lease.w0 & kUnitsMask;
  expiry_ms = lease.expiryMs();
  lease.w0 |= kReleasedFlag;
  return LeaseRelease::kReleased;
}

LeaseRenewal renewEntry(State& lease, std::uint64_t id, std::int64_t now_ms,
                        std::int64_t new_expiry_ms, std::uint64_t& units,
                        std::int64_t& old_expiry_ms) {
  if (!isLeaseEntry(lease) || lease.w1 != id) return LeaseRenewal::kUnknown;
  if (lease.expiryMs() <= now_ms) return LeaseRenewal::kExpired;
  if ((lease.w0 & kReleasedFlag) != 0) return LeaseRenewal::kReleased;
  units = lease.w0 & kUnitsMask;
  old_expiry_ms = lease.expiryMs();
  lease = leaseEntry(std::max(old_expiry_ms, new_expiry_ms), id, units);
  return LeaseRenewal::kRenewed;
}

Decision acquireUnits(const Limit& limit, State& counter, std::uint64_t cost, std::int64_t now_ns) {
  const std::uint64_t L = limit.limit();
  const std::int64_t g_ms = generationMs(limit);
  const std::int64_t now_gen = nowMs(now_ns) / g_ms;
  Counter c = decodeCounter(counter, g_ms);
  advance(c, now_gen);
  const std::uint64_t held = c.held();
  const std::uint64_t need = cost == 0 ? 1 : cost;
  const bool allowed = held + need <= L;
  if (allowed && cost != 0) {
    c.counts[0] += cost;
    counter = encodeCounter(c, g_ms);
  }
  const std::uint64_t now_held = allowed && cost != 0 ? held + cost : held;
  Decision d{allowed, L, now_held >= L ? 0 : L - now_held, Duration(0), Duration(0)};
  // reset: when the newest generation holding anything expires; retry: when the oldest ones have
  // freed enough.
  std::uint64_t freed = 0;
  for (int i = kGenerations - 1; i >= 0; --i) {
    if (c.counts[i] == 0) continue;
    const std::int64_t expiry_ns = (c.newest - i + kGenerations) * g_ms * kNsPerMs;
    d.reset_after = Duration(std::max<std::int64_t>(0, expiry_ns - now_ns));
    freed += c.counts[i];
    if (!allowed && d.retry_after == Duration(0) && held - freed + need <= L) {
      d.retry_after = Duration(std::max<std::int64_t>(1, expiry_ns - now_ns));
    }
  }
  if (!allowed && need > L) d.retry_after = kRetryNever;
  return d;
}

Decision releaseUnits(const Limit& limit, State& counter, std::int64_t lease_expiry_ms,
                      std::uint64_t units, std::int64_t now_ns) {
  const std::int64_t g_ms = generationMs(limit);
  Counter c = decodeCounter(counter, g_ms);
  advance(c, nowMs(now_ns) / g_ms);
  const std::int64_t gen = lease_expiry_ms / g_ms - kGenerations;
  const std::int64_t i = c.newest - gen;
  if (i >= 0 && i < kGenerations && units > 0) {
    c.counts[i] -= std::min(c.counts[i], units);
    counter = encodeCounter(c, g_ms);
  }
  State probe = counter;
  Decision d = acquireUnits(limit, probe, 0, now_ns);
  d.allowed = true;
  d.retry_after = Duration(0);
  return d;
}

Decision renewUnits(const Limit& limit, State& counter, std::int64_t old_expiry_ms,
                    std::uint64_t units, std::int64_t now_ns) {
  const std::int64_t g_ms = generationMs(limit);
  Counter c = decodeCounter(counter, g_ms);
  advance(c, nowMs(now_ns) / g_ms);
  const std::int64_t i = c.newest - (old_expiry_ms / g_ms - kGenerations);
  if (i > 0 && i < kGenerations) {  // i == 0: renewed within its own generation, nothing moves
    c.counts[i] -= std::min(c.counts[i], units);
    c.counts[0] = std::min(c.counts[0] + units, kUnitsMask);
  } else if (i >= kGenerations || i < 0) {
    c.counts[0] = std::min(c.counts[0] + units, kUnitsMask);
  }
  counter = encodeCounter(c, g_ms);
  State probe = counter;
  Decision d = acquireUnits(limit, probe, 0, now_ns);
  d.allowed = true;
  d.retry_after = Duration(0);
  return d;
}

LeaseCounts leaseCounts(const State& counter) {
  LeaseCounts out;
  if (counter.empty() || isLeaseEntry(counter)) return out;
  out.newest_expiry_ms = counter.expiryMs();
  for (int i = 0; i < kGenerations; ++i) out.counts[i] = (counter.w1 >> (16 * i)) & kUnitsMask;
  return out;
}

State mergeLease(const State& a, const State& b) {
  if (isLeaseEntry(a) || isLeaseEntry(b)) {
    if (!isLeaseEntry(a)) return b;
    if (!isLeaseEntry(b)) return a;
    if ((a.w0 & kReleasedFlag) != (b.w0 & kReleasedFlag)) {
      return (b.w0 & kReleasedFlag) != 0 ? b : a;
    }
    return b.expiryMs() > a.expiryMs() ? b : a;
  }
  // Counters. The generation length is not in the state, so states of different newest
  // generations cannot be aligned: the older's counts go one generation newer than they can
  // have been (they are at least one older), which keeps them at least as long as they live.
  const bool a_newer = a.expiryMs() >= b.expiryMs();
  const State& newer = a_newer ? a : b;
  const State& older = a_newer ? b : a;
  const LeaseCounts n = leaseCounts(newer);
  const LeaseCounts o = leaseCounts(older);
  State out;
  out.w0 = newer.w0;
  for (int i = 0; i < kGenerations; ++i) {
    std::uint64_t c = n.counts[i];
    if (n.newest_expiry_ms == o.newest_expiry_ms) {
      c = std::max(c, o.counts[i]);
    } else if (i >= 1) {
      c += o.counts[i - 1];
    }
    out.w1 |= std::min<std::uint64_t>(c, kUnitsMask) << (16 * i);
  }
  return out;
}

}  // namespace throttlex

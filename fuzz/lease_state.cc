// Fuzz target: concurrency-limit states as a snapshot or a handoff delivers them (limiter/lease.h):
// two 16-byte states of anything, then a limit and a string of operations (acquire, release or
// renewal of a lease entry, release or renewal of units, merge). A node restores such states from a
// Redis others may write to and from peers, so whatever they hold must be decided without a crash,
// and an acquire is never allowed above the limit, a tombstone never releases twice and a merge
// never drops a held unit of two states of one generation; a renewal keeps the lease's id and units
// and never shortens it.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "limiter/lease.h"
#include "persistence/merge.h"

using namespace throttlex;

namespace {

std::uint64_t take64(const std::uint8_t*& data, std::size_t& size) {
  std::uint64_t v = 0;
  const std::size_t n = size < 8 ? size : 8;
  std::memcpy(&v, data, n);
  data += n;
  size -= n;
  return v;
}

std::uint64_t held(const State& s) {
  return view(s).count;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  State a{take64(data, size), take64(data, size)};
  State b{take64(data, size), take64(data, size)};
  const std::uint64_t shape = take64(data, size);
  const auto limit = Limit::make({Algorithm::kConcurrency, 1 + shape % kMaxConcurrency,
                                  std::chrono::milliseconds(1 + (shape >> 16) % 86'400'000), 0});
  if (!limit) __builtin_trap();
  std::int64_t now_ms = 1'700'000'000'000 + static_cast<std::int64_t>((shape >> 48) % 100'000);
  (void)plausibleAt(a, now_ms);
  (void)plausibleAt(b, now_ms);
  while (size > 0) {
    const std::uint8_t op = *data++;
    --size;
    const Time now{std::chrono::milliseconds(now_ms)};
    switch (op % 7) {
      case 0: {
        State s = a;
        if (decide(*limit, s, op >> 3, now).allowed && (op >> 3) > 0 && held(s) > limit->limit()) {
          __builtin_trap();  // an allowed acquire never holds more than the limit
        }
        a = s;
        break;
      }
      case 1: {
        std::uint64_t units = 0;
        std::int64_t expiry = 0;
        const LeaseRelease first = releaseEntry(b, b.w1, now_ms, units, expiry);
        if (first == LeaseRelease::kReleased &&
            releaseEntry(b, b.w1, now_ms, units, expiry) == LeaseRelease::kReleased) {
          __builtin_trap();  // a released lease is a tombstone
        }
        break;
      }
      case 2:
        (void)releaseUnits(*limit, a, now_ms + (op >> 3) * 1000, op >> 5, now_ms * 1'000'000);
        break;
      case 3: {
        const State m = persistence::moreConsumed(a, b);
        if (!isLeaseEntry(a) && !isLeaseEntry(b) && a.tag() == Algorithm::kConcurrency &&
            b.tag() == Algorithm::kConcurrency && a.expiryMs() == b.expiryMs() &&
            held(m) < std::max(held(a), held(b))) {
          __builtin_trap();  // a merge of one generation keeps every held unit
        }
        b = m;
        break;
      }
      case 4: {
        std::uint64_t units = 0;
        std::int64_t old_expiry = 0;
        const State before = b;
        const std::int64_t until = leaseExpiryMs(*limit, now);
        if (renewEntry(b, b.w1, now_ms, until, units, old_expiry) == LeaseRenewal::kRenewed &&
            (b.w1 != before.w1 || b.expiryMs() < before.expiryMs() || !isLeaseEntry(b) ||
             (b.w0 & 0xFFFF) != units)) {
          __builtin_trap();  // same id and units, never shorter
        }
        break;
      }
      case 5:
        (void)renewUnits(*limit, a, now_ms + (op >> 3) * 1000, op >> 5, now_ms * 1'000'000);
        break;
      default:
        now_ms += op;
        break;
    }
  }
  return 0;
}

// Concurrency limits (Algorithm::kConcurrency): at most `limit` leases of a key held at once. An
// acquire that fits returns a lease (an id and an expiry); a release, or the expiry for a client
// that crashed, gives its units back.
//
// Where leases live (docs/concurrency.md): in the Store, as ordinary 16-byte entries, so that the
// snapshot, the handoff and the sweeper carry them with no code of their own.
//  - The key's counter: how many units are held, per generation of acquires. A generation is G =
//    ceil(period / 3) ms of the clock; a lease acquired in generation g expires at (g + 4) * G, so
//    between `period` and `period + G` after its acquire, and at most 4 generations are live at
//    once. Layout: w0 = header (tag 6, expiry = the newest generation's end) with bit 17 clear;
//    w1 = four 16-bit counts, newest generation in the low bits. Hence kMaxConcurrency.
//  - One entry per lease, under leaseKey(key, id) (the key's slot, so it moves with the key):
//    w0 = header (tag 6, expiry = the lease's) | bit 17 | bit 16 when released | units (16 bits);
//    w1 = the lease id. A released lease stays as a tombstone until its expiry, so a release that
//    is repeated (after a retry, a restore or a handoff) never gives a unit back twice.
// Cost per held lease: one store entry (~45 bytes with the table's load factor).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "limiter/clock.h"
#include "limiter/decision.h"
#include "limiter/key.h"
#include "limiter/limit.h"
#include "limiter/state.h"

namespace throttlex {

inline constexpr std::uint64_t kMaxConcurrency = 65535;  // leases (units) held at once per key

// What a release found.
enum class LeaseRelease : std::uint8_t {
  kReleased = 1,         // it was held; its units are back
  kUnknown = 2,          // no such lease of this key (never granted, or its expiry swept it away)
  kExpired = 3,          // it expired before the release; its units came back then
  kAlreadyReleased = 4,  // released before; nothing changed
};
std::string_view leaseReleaseName(LeaseRelease r);  // "released", "unknown", ...

// What a renewal found.
enum class LeaseRenewal : std::uint8_t {
  kRenewed = 1,   // it was held; it now expires a full lease_ttl from now (same id, same units)
  kUnknown = 2,   // no such lease of this key
  kExpired = 3,   // it expired before the renewal; its units came back then (acquire anew)
  kReleased = 4,  // it was released; nothing changed
};
std::string_view leaseRenewalName(LeaseRenewal r);  // "renewed", "unknown", ...

// A lease id as the APIs write it for people and JSON: 16 lowercase hex digits (a JSON number would
// lose bits). parseLeaseId() takes 1 to 16 hex digits of either case; 0 is no lease id.
std::string formatLeaseId(std::uint64_t id);
std::optional<std::uint64_t> parseLeaseId(std::string_view text);

// The store key of lease `id` of `key`: in the key's slot, otherwise unrelated to any key hash.
KeyHash leaseKey(const KeyHash& key, std::uint64_t id);

// When a lease acquired at `now` expires (ms since the Unix epoch).
std::int64_t leaseExpiryMs(const Limit& limit, Time now);

// The lease entry of a granted lease.
State leaseEntry(std::int64_t expiry_ms, std::uint64_t id, std::uint64_t units);

// Whether `state` is a lease entry (else a counter, or another algorithm's state).
bool isLeaseEntry(const State& state);

// Marks lease entry `lease` of id `id` released at `now_ms` (a tombstone until its expiry). On
// kReleased, `units` gets the lease's units and `expiry_ms` its expiry; anything else changes
// nothing.
LeaseRelease releaseEntry(State& lease, std::uint64_t id, std::int64_t now_ms, std::uint64_t& units,
                          std::int64_t& expiry_ms);

// Extends held lease entry `lease` of id `id` to `new_expiry_ms` (a renewal at `now_ms`). On
// kRenewed, `units` gets the lease's units and `old_expiry_ms` the expiry it had; anything else
// changes nothing.
LeaseRenewal renewEntry(State& lease, std::uint64_t id, std::int64_t now_ms,
                        std::int64_t new_expiry_ms, std::uint64_t& units,
                        std::int64_t& old_expiry_ms);

// The counter's decisions (called by decide() and by Store::release()/renew()):
// acquire `cost` units (cost 0: may one more unit be acquired now?); retry_after is when enough
// leases expire at the latest (a release may come sooner), reset_after when the last one does.
Decision acquireUnits(const Limit& limit, State& counter, std::uint64_t cost, std::int64_t now_ns);
// Gives back `units` of a lease that expires at `lease_expiry_ms`; nothing if that generation
// expired already. Always allowed.
Decision releaseUnits(const Limit& limit, State& counter, std::int64_t lease_expiry_ms,
                      std::uint64_t units, std::int64_t now_ns);

// Moves `units` of a renewed lease from the generation that expired at `old_expiry_ms` to now's
// (where its new expiry is). Never refused, whatever the limit is now: the lease is held. Units
// the counter no longer holds there (that generation expired) are counted anew.
Decision renewUnits(const Limit& limit, State& counter, std::int64_t old_expiry_ms,
                    std::uint64_t units, std::int64_t now_ns);

// Held units per generation, newest first (inspection and tests).
struct LeaseCounts {
  std::int64_t newest_expiry_ms = 0;
  std::uint64_t counts[4] = {};
};
LeaseCounts leaseCounts(const State& counter);

// Merges two states of the same counter or lease entry (restore, handoff) without granting a unit
// twice: a released lease wins over a held one, and of two held the later expiry (a renewal);
// counters of the same newest generation take the
// larger count of each generation, and of different ones add what the older holds onto the newer's
// generations (over-counts until those leases expire; never under-counts).
State mergeLease(const State& a, const State& b);

}  // namespace throttlex

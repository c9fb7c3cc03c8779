// What slot ownership (daemon/slots/: recovery, parking, handoffs, claims) counts, declared once.
// The SlotKeeperStats fields, the Prometheus families (daemon/metrics/) and the node's status
// (NodeInfo, daemon/base/node_info.h) all come from THROTTLEX_SLOT_STATS; a new counter is one
// line here plus the place that counts it.
#pragma once

#include <cstdint>

namespace throttlex {

enum class StatKind : std::uint8_t { kGauge, kCounter };

// X(field, metric name, kind, help, label, label value). Rows that share a metric name form one
// family, told apart by the label (empty: no label).
#define THROTTLEX_SLOT_STATS(X)                                                                   \
  X(slots_waiting, "throttlex_slots_waiting", kGauge,                                             \
    "Slots whose state is on the way (recovery or handoff); their checks wait", "", "")           \
  X(parked_now, "throttlex_parked_checks", kGauge, "Checks waiting for their slot's state now",   \
    "", "")                                                                                       \
  X(parked_total, "throttlex_parked_checks_total", kCounter,                                      \
    "Checks that waited for their slot's state", "", "")                                          \
  X(recoveries, "throttlex_recovery_slots_total", kCounter, "Slots read from the snapshot store", \
    "", "")                                                                                       \
  X(recovery_errors, "throttlex_recovery_errors_total", kCounter,                                 \
    "Failed snapshot reads (retried until the slot's deadline)", "", "")                          \
  X(recovery_timeouts, "throttlex_recovery_timeouts_total", kCounter,                             \
    "Slots opened by their deadline before all their state arrived", "", "")                      \
  X(recovered_entries, "throttlex_recovery_entries_total", kCounter,                              \
    "Entries read from the snapshot store", "", "")                                               \
  X(implausible, "throttlex_recovery_implausible_entries_total", kCounter,                        \
    "Snapshot entries no valid limit could have written (dropped)", "", "")                       \
  X(handoffs_sent, "throttlex_handoffs_total", kCounter, "Completed slot handoffs, by direction", \
    "direction", "sent")                                                                          \
  X(handoffs_received, "throttlex_handoffs_total", kCounter,                                      \
    "Completed slot handoffs, by direction", "direction", "received")                             \
  X(handoff_entries_sent, "throttlex_handoff_entries_total", kCounter,                            \
    "Entries moved by handoffs, by direction", "direction", "sent")                               \
  X(handoff_entries_received, "throttlex_handoff_entries_total", kCounter,                        \
    "Entries moved by handoffs, by direction", "direction", "received")                           \
  X(handoff_failures, "throttlex_handoff_failures_total", kCounter,                               \
    "Failed handoff calls (the state stayed on the sender)", "", "")                              \
  X(malformed_received, "throttlex_handoff_malformed_entries_total", kCounter,                    \
    "Handoff entries received that were malformed or implausible (skipped)", "", "")              \
  X(claims, "throttlex_slot_claims_total", kCounter,                                              \
    "Slots decided here before this node's ring said so (a handoff from their owner came first)", \
    "", "")

struct SlotKeeperStats {
#define THROTTLEX_SLOT_FIELD(field, ...) std::uint64_t field = 0;
  THROTTLEX_SLOT_STATS(THROTTLEX_SLOT_FIELD)
#undef THROTTLEX_SLOT_FIELD
  bool draining = false;  // handing every slot over before it stops
  bool drained = false;
};

}  // namespace throttlex

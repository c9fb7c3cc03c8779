// What peers and operators can ask of a node beyond checks and rules: take over slots' state
// (handoff), write snapshots now, drain, change the gossip keyring. Implemented in the node's
// wiring (daemon/node/node.cc) over the SlotKeeper, the snapshot writer and the keyring; the RPC
// server calls these (any RPC thread; each member may be empty: not available).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "limiter/result.h"

namespace throttlex {

struct SnapshotOutcome {
  std::uint64_t written = 0;  // entries the store confirmed in this flush
  std::uint64_t pending = 0;  // entries still waiting afterwards (failed, or changed meanwhile)
};

enum class KeyringOp : std::uint8_t { kList, kInstall, kUse, kRemove };

struct KeyringKey {
  std::string id;  // 8 hex digits
  bool primary = false;
};

struct NodeControl {
  // Merges a peer's handoff (daemon/slots/slot_keeper.h); returns the entries merged. Quick.
  std::function<Result<std::uint64_t>(const std::string& from, std::span<const std::uint16_t> slots,
                                      std::span<const std::uint8_t> entries)>
      handoff;
  // Starts a flush of every pending snapshot entry; `done` is called once, on any thread.
  std::function<void(std::function<void(Result<SnapshotOutcome>)> done)> snapshot;
  // Starts draining (as SIGTERM): hand off, leave, exit. Returns at once.
  std::function<Status()> drain;
  // Lists or changes the gossip keyring (and saves it to its file); returns the keyring after.
  std::function<Result<std::vector<KeyringKey>>(KeyringOp op, const std::string& key)> keyring;
};

}  // namespace throttlex

// RedisStore: the SnapshotStore on Redis (hiredis 0.14 async API on a standalone Asio io_context,
// one thread of its own). Layout in redis_layout.h and docs/persistence.md.
//
// Contracts (beyond SnapshotStore's):
//  - The store connects in the background and keeps reconnecting with exponential backoff
//    (reconnect_min doubling to reconnect_max, ±20% jitter). It is "connected" once the connection
//    is up and the write script is loaded.
//  - While not connected, write() and readSlots() fail at once with kUnavailable, on the caller's
//    thread, without touching the store's thread. Callers keep what they need (SnapshotWriter).
//  - Deadlines: connect (TCP + script load) within connect_timeout; every command within
//    command_timeout of being sent. hiredis 0.14 has neither, so Asio timers enforce both: a
//    command past its deadline fails with kDeadlineExceeded and the connection is dropped (replies
//    come in order, so a late reply would delay every command behind it) and re-established with
//    backoff.
//  - Commands are pipelined: a write() becomes one script call per slot and entries_per_command
//    entries, all sent at once; a readSlots() one HGETALL per slot.
//  - Callbacks run on the store's thread (or inline on a fast failure) and must not block it.
//  - Destruction fails everything in flight with kUnavailable and joins the thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "limiter/clock.h"
#include "limiter/result.h"
#include "persistence/snapshot_store.h"

namespace throttlex::persistence {

struct RedisStoreOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string cluster = "throttlex";  // namespace inside the key names; one per cluster
  // AUTH on every connection when `password` is set (`user` empty: the default user, as
  // requirepass; else an ACL user). A refused AUTH fails the connection, which is retried.
  std::string user;
  std::string password;
  std::chrono::milliseconds connect_timeout{500};
  std::chrono::milliseconds command_timeout{500};
  std::chrono::milliseconds reconnect_min{50};
  std::chrono::milliseconds reconnect_max{2'000};
  std::size_t entries_per_command = 256;  // entries per script call (bounds Redis' time per call)
  std::size_t max_inflight = 10'000;  // commands in flight; beyond, calls fail kResourceExhausted
  // Connection events ("connected", "connection lost: ..."), from the store's thread. Optional.
  std::function<void(const std::string&)> on_event;
};

class RedisStore final : public SnapshotStore {
 public:
  // Validates the options and starts connecting; does not wait for the connection. `clock` (Unix
  // time for expiry decisions) must outlive the store.
  static Result<std::unique_ptr<RedisStore>> make(const RedisStoreOptions& options,
                                                  const Clock& clock);
  ~RedisStore() override;
  RedisStore(const RedisStore&) = delete;
  RedisStore& operator=(const RedisStore&) = delete;

  void write(std::vector<SnapshotEntry> entries, WriteCallback done) override;
  void readSlots(std::vector<std::uint32_t> slots, ReadCallback done) override;
  SnapshotStoreStats stats() const override;

 private:
  class Impl;
  explicit RedisStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace throttlex::persistence

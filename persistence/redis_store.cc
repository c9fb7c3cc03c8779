#include "persistence/redis_store.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <optional>
#include <random>
#include <string_view>
#include <thread>
#include <utility>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include "persistence/hiredis_asio.h"
#include "persistence/redis_layout.h"

namespace throttlex::persistence {
namespace {

namespace layout = redis_layout;
// Exactly one of `reply` and `error` is set. `reply` lives only during the call.
using ReplyFn = std::function<void(const redisReply* reply, const Error* error)>;

Error unavailable(std::string message) {
  return {ErrorCode::kUnavailable, std::move(message)};
}

std::int64_t unixMs(const Clock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock.now().time_since_epoch())
      .count();
}

std::string_view text(const redisReply* r) {
  return {r->str, r->len};
}

bool startsWith(const redisReply* r, std::string_view prefix) {
  return r->type == REDIS_REPLY_ERROR && text(r).substr(0, prefix.size()) == prefix;
}

}  // namespace

class RedisStore::Impl {
 public:
  Impl(const RedisStoreOptions& options, const Clock& clock)
      : options_(options),
        clock_(clock),
        work_(asio::make_work_guard(io_)),
        connect_timer_(io_),
        reconnect_timer_(io_),
        deadline_timer_(io_),
        backoff_(options.reconnect_min),
        rng_(std::random_device{}()) {}

  void start() {
    thread_ = std::thread([this] { io_.run(); });
    asio::post(io_, [this] { connect(); });
  }

  // Fails whatever is in flight, stops reconnecting, and joins the thread.
  void shutdown() {
    asio::post(io_, [this] {
      closing_ = true;
      reconnect_timer_.cancel();
      connect_timer_.cancel();
      deadline_timer_.cancel();
      dropConnection(unavailable("redis store closed"));
      work_.reset();
    });
    thread_.join();
  }

  void write(std::vector<SnapshotEntry> entries, WriteCallback done) {
    if (!connected_.load(std::memory_order_acquire)) {  // fail fast, on the caller's thread
      errors_.fetch_add(1, std::memory_order_relaxed);
      done(unavailable("redis not connected"));
      return;
    }
    asio::post(io_, [this, entries = std::move(entries), done = std::move(done)]() mutable {
      doWrite(std::move(entries), std::move(done));
    });
  }

  void readSlots(std::vector<std::uint32_t> slots, ReadCallback done) {
    if (!connected_.load(std::memory_order_acquire)) {
      errors_.fetch_add(1, std::memory_order_relaxed);
      done(unavailable("redis not connected"));
      return;
    }
    asio::post(io_, [this, slots = std::move(slots), done = std::move(done)]() mutable {
      doRead(std::move(slots), std::move(done));
    });
  }

  SnapshotStoreStats stats() const {
    SnapshotStoreStats s;
    s.connected = connected_.load(std::memory_order_acquire);
    s.commands = commands_.load(std::memory_order_relaxed);
    s.errors = errors_.load(std::memory_order_relaxed);
    s.timeouts = timeouts_.load(std::memory_order_relaxed);
    s.reconnects = reconnects_.load(std::memory_order_relaxed);
    s.malformed = malformed_.load(std::memory_order_relaxed);
    s.entries_written = entries_written_.load(std::memory_order_relaxed);
    s.entries_read = entries_read_.load(std::memory_order_relaxed);
    s.latency = latency_.snapshot();
    return s;
  }

 private:
  enum class Conn { kDown, kConnecting, kReady };
  struct InFlight {
    std::uint64_t id;
    Instant sent;  // on the clock's monotonic reading
    Instant deadline;
    ReplyFn done;
  };

  // --- Connection (store thread only) ------------------------------------------------------------

  void connect() {
    if (closing_) return;
    ++generation_;
    redisAsyncContext* ac = redisAsyncConnect(options_.host.c_str(), options_.port);
    if (ac == nullptr || ac->err != 0) {
      const std::string why = ac == nullptr ? "out of memory" : ac->errstr;
      if (ac != nullptr) redisAsyncFree(ac);
      connectionLost(unavailable("redis connect failed: " + why));
      return;
    }
    ac->data = this;
    if (!attachToAsio(ac, io_)) {
      redisAsyncFree(ac);
      connectionLost(unavailable("redis connect failed: cannot watch the socket"));
      return;
    }
    redisAsyncSetConnectCallback(ac, &Impl::onConnect);
    redisAsyncSetDisconnectCallback(ac, &Impl::onDisconnect);
    ac_ = ac;
    conn_ = Conn::kConnecting;
    connect_timer_.expires_after(options_.connect_timeout);
    connect_timer_.async_wait([this, gen = generation_](const std::error_code& ec) {
      if (ec || gen != generation_ || conn_ != Conn::kConnecting) return;
      timeouts_.fetch_add(1, std::memory_order_relaxed);
      dropConnection({ErrorCode::kDeadlineExceeded, "redis connect timed out"});
    });
    if (!options_.password.empty()) authenticate();  // pipelined ahead of everything else
    loadScript();  // the first command also starts the wait for the TCP connect to finish
  }

  void authenticate() {
    std::vector<std::string> args = {"AUTH"};
    if (!options_.user.empty()) args.push_back(options_.user);
    args.push_back(options_.password);
    send(args, [this](const redisReply* r, const Error*) {
      if (r == nullptr || r->type != REDIS_REPLY_ERROR) return;
      errors_.fetch_add(1, std::memory_order_relaxed);
      dropConnection(unavailable("redis AUTH failed: " + std::string(text(r))));
    });
  }

  void loadScript() {
    send({"SCRIPT", "LOAD", layout::kWriteScript}, [this](const redisReply* r, const Error*) {
      if (r == nullptr) return;  // the connection is gone; connectionLost() handles it
      if (r->type != REDIS_REPLY_STRING) {
        errors_.fetch_add(1, std::memory_order_relaxed);
        const std::string why = r->type == REDIS_REPLY_ERROR ? std::string(text(r)) : "bad reply";
        dropConnection(unavailable("redis SCRIPT LOAD failed: " + why));
        return;
      }
      sha_ = std::string(text(r));
      if (conn_ != Conn::kConnecting) return;  // a reload after NOSCRIPT
      conn_ = Conn::kReady;
      connected_.store(true, std::memory_order_release);
      connect_timer_.cancel();
      backoff_ = options_.reconnect_min;
      if (ever_connected_) reconnects_.fetch_add(1, std::memory_order_relaxed);
      ever_connected_ = true;
      reported_down_ = false;
      event("redis connected to " + options_.host + ":" + std::to_string(options_.port));
    });
  }

  // We end the connection (deadline, protocol error, shutdown). Everything in flight fails with
  // `reason`; hiredis' own callbacks for this context are ignored from here on (ac != ac_).
  void dropConnection(Error reason) {
    redisAsyncContext* ac = ac_;
    ac_ = nullptr;
    connectionLost(std::move(reason));
    if (ac != nullptr) redisAsyncFree(ac);  // deferred by hiredis when inside its callback
  }

  void connectionLost(Error reason) {
    const bool was_ready = conn_ == Conn::kReady;
    conn_ = Conn::kDown;
    connected_.store(false, std::memory_order_release);
    connect_timer_.cancel();
    std::deque<InFlight> failed;
    failed.swap(inflight_);
    for (InFlight& f : failed) {
      errors_.fetch_add(1, std::memory_order_relaxed);
      f.done(nullptr, &reason);
    }
    if (was_ready || !reported_down_) event("redis connection lost: " + reason.message);
    reported_down_ = true;
    scheduleReconnect();
  }

  void scheduleReconnect() {
    if (closing_) return;
    std::uniform_real_distribution<double> jitter(0.8, 1.2);
    const auto delay = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::duration<double, std::milli>(static_cast<double>(backoff_.count()) *
                                                  jitter(rng_)));
    backoff_ = std::min(backoff_ * 2, options_.reconnect_max);
    reconnect_timer_.expires_after(delay);
    reconnect_timer_.async_wait([this](const std::error_code& ec) {
      if (!ec && !closing_) connect();
    });
  }

  static Impl* self(const redisAsyncContext* ac) { return static_cast<Impl*>(ac->data); }

  static void onConnect(const redisAsyncContext* ac, int status) {
    Impl* impl = self(ac);
    if (status == REDIS_OK || ac != impl->ac_) return;
    impl->ac_ = nullptr;  // hiredis frees the context after this callback
    impl->connectionLost(unavailable(std::string("redis connect failed: ") + ac->errstr));
  }

  static void onDisconnect(const redisAsyncContext* ac, int status) {
    Impl* impl = self(ac);
    if (ac != impl->ac_) return;
    impl->ac_ = nullptr;
    impl->connectionLost(unavailable(status == REDIS_OK
                                         ? std::string("redis disconnected")
                                         : std::string("redis I/O error: ") + ac->errstr));
  }

  static void onReply(redisAsyncContext* ac, void* reply, void* privdata) {
    Impl* impl = self(ac);
    impl->complete(reinterpret_cast<std::uintptr_t>(privdata), static_cast<redisReply*>(reply));
  }

  void event(const std::string& what) {
    if (options_.on_event) options_.on_event(what);
  }

  // --- Commands (store thread only) --------------------------------------------------------------

  void send(const std::vector<std::string>& args, ReplyFn done) {
    if (ac_ == nullptr) {
      errors_.fetch_add(1, std::memory_order_relaxed);
      const Error e = unavailable("redis not connected");
      done(nullptr, &e);
      return;
    }
    if (inflight_.size() >= options_.max_inflight) {
      errors_.fetch_add(1, std::memory_order_relaxed);
      const Error e{ErrorCode::kResourceExhausted, "too many redis commands in flight"};
      done(nullptr, &e);
      return;
    }
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (const std::string& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    const std::uint64_t id = ++next_id_;
    if (redisAsyncCommandArgv(
            ac_, &Impl::onReply, reinterpret_cast<void*>(static_cast<std::uintptr_t>(id)),
            static_cast<int>(argv.size()), argv.data(), lens.data()) != REDIS_OK) {
      errors_.fetch_add(1, std::memory_order_relaxed);
      const Error e = unavailable("redis connection is closing");
      done(nullptr, &e);
      return;
    }
    const Instant now = clock_.monotonic();
    const bool was_empty = inflight_.empty();
    inflight_.push_back({id, now, now + options_.command_timeout, std::move(done)});
    if (was_empty) watchDeadline();
  }

  // Replies come in order, so the oldest command in flight has the earliest deadline.
  void watchDeadline() {
    deadline_timer_.expires_after(inflight_.front().deadline - clock_.monotonic());
    deadline_timer_.async_wait([this](const std::error_code& ec) {
      if (ec || inflight_.empty()) return;
      if (inflight_.front().deadline > clock_.monotonic()) {
        watchDeadline();
        return;
      }
      timeouts_.fetch_add(1, std::memory_order_relaxed);
      dropConnection({ErrorCode::kDeadlineExceeded, "redis command timed out"});
    });
  }

  void complete(std::uint64_t id, const redisReply* reply) {
    auto it = std::find_if(inflight_.begin(), inflight_.end(),
                           [id](const InFlight& f) { return f.id == id; });
    if (it == inflight_.end()) return;  // already failed by connectionLost()
    InFlight f = std::move(*it);
    inflight_.erase(it);
    latency_.record(clock_.monotonic() - f.sent);
    commands_.fetch_add(1, std::memory_order_relaxed);
    if (reply == nullptr) {
      errors_.fetch_add(1, std::memory_order_relaxed);
      const Error e = unavailable("redis connection lost");
      f.done(nullptr, &e);
      return;
    }
    f.done(reply, nullptr);
  }

  // --- Snapshot operations (store thread only) ---------------------------------------------------

  void doWrite(std::vector<SnapshotEntry> entries, WriteCallback done) {
    if (conn_ != Conn::kReady) {
      errors_.fetch_add(1, std::memory_order_relaxed);
      done(unavailable("redis not connected"));
      return;
    }
    // Stable: a key written twice in one call keeps its last state (the script runs in order).
    std::stable_sort(
        entries.begin(), entries.end(),
        [](const SnapshotEntry& a, const SnapshotEntry& b) { return a.slot < b.slot; });
    const std::string now = std::to_string(unixMs(clock_));
    std::vector<std::vector<std::string>> commands;
    std::size_t count = 0;
    for (std::size_t i = 0; i < entries.size();) {
      const std::uint32_t slot = entries[i].slot;
      std::vector<std::string> args{"EVALSHA",
                                    sha_,
                                    "2",
                                    layout::hashKey(options_.cluster, slot),
                                    layout::indexKey(options_.cluster, slot),
                                    now};
      std::size_t in_command = 0;
      for (; i < entries.size() && entries[i].slot == slot &&
             in_command < options_.entries_per_command;
           ++i) {
        const SnapshotEntry& e = entries[i];
        if (e.slot >= kSlotCount || slotOf(e.key) != e.slot || e.expiry_ms < 0) {
          malformed_.fetch_add(1, std::memory_order_relaxed);  // a caller bug; Redis stays clean
          continue;
        }
        args.push_back(layout::encodeField(e.key));
        args.push_back(layout::encodeValue(e.state, e.expiry_ms));
        args.push_back(std::to_string(e.expiry_ms));
        ++in_command;
      }
      if (in_command == 0) continue;
      count += in_command;
      commands.push_back(std::move(args));
    }
    if (commands.empty()) {
      done(Ok{});
      return;
    }
    struct Op {
      std::size_t remaining;
      std::size_t entries;
      std::optional<Error> error;
      WriteCallback done;
    };
    auto op = std::make_shared<Op>(Op{commands.size(), count, std::nullopt, std::move(done)});
    for (const auto& args : commands) {
      send(args, [this, op](const redisReply* r, const Error* error) {
        if (error != nullptr) {
          if (!op->error) op->error = *error;
        } else if (r->type == REDIS_REPLY_INTEGER) {
          malformed_.fetch_add(static_cast<std::uint64_t>(std::max<long long>(0, r->integer)),
                               std::memory_order_relaxed);
        } else {
          errors_.fetch_add(1, std::memory_order_relaxed);
          if (startsWith(r, "NOSCRIPT")) loadScript();  // Redis lost its script cache
          if (!op->error) {
            const std::string why =
                r->type == REDIS_REPLY_ERROR ? std::string(text(r)) : "bad reply";
            op->error = unavailable("redis write failed: " + why);
          }
        }
        if (--op->remaining > 0) return;
        if (op->error) {
          op->done(std::move(*op->error));
        } else {
          entries_written_.fetch_add(op->entries, std::memory_order_relaxed);
          op->done(Ok{});
        }
      });
    }
  }

  void doRead(std::vector<std::uint32_t> slots, ReadCallback done) {
    if (conn_ != Conn::kReady) {
      errors_.fetch_add(1, std::memory_order_relaxed);
      done(unavailable("redis not connected"));
      return;
    }
    std::sort(slots.begin(), slots.end());
    slots.erase(std::unique(slots.begin(), slots.end()), slots.end());
    slots.erase(
        std::remove_if(slots.begin(), slots.end(), [](std::uint32_t s) { return s >= kSlotCount; }),
        slots.end());
    if (slots.empty()) {
      done(std::vector<SnapshotEntry>{});
      return;
    }
    struct Op {
      std::size_t remaining;
      std::vector<SnapshotEntry> entries;
      std::optional<Error> error;
      ReadCallback done;
    };
    auto op = std::make_shared<Op>(Op{slots.size(), {}, std::nullopt, std::move(done)});
    for (const std::uint32_t slot : slots) {
      send({"HGETALL", layout::hashKey(options_.cluster, slot)},
           [this, op, slot](const redisReply* r, const Error* error) {
             if (error != nullptr) {
               if (!op->error) op->error = *error;
             } else if (r->type == REDIS_REPLY_ARRAY) {
               decodeSlot(r, slot, op->entries);
             } else if (startsWith(r, "WRONGTYPE")) {
               malformed_.fetch_add(1, std::memory_order_relaxed);  // a foreign key: no entries
             } else {
               errors_.fetch_add(1, std::memory_order_relaxed);
               if (!op->error) op->error = unavailable("redis read failed");
             }
             if (--op->remaining > 0) return;
             if (op->error) {
               op->done(std::move(*op->error));
             } else {
               entries_read_.fetch_add(op->entries.size(), std::memory_order_relaxed);
               op->done(std::move(op->entries));
             }
           });
    }
  }

  // Appends the live, well-formed entries of one slot's HGETALL reply; counts the rest.
  void decodeSlot(const redisReply* r, std::uint32_t slot, std::vector<SnapshotEntry>& out) {
    const std::int64_t now = unixMs(clock_);
    std::uint64_t bad = r->elements % 2;
    for (std::size_t i = 0; i + 1 < r->elements; i += 2) {
      const redisReply* f = r->element[i];
      const redisReply* v = r->element[i + 1];
      if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
        ++bad;
        continue;
      }
      const std::optional<KeyHash> key = layout::decodeField(text(f));
      const std::optional<layout::Value> value = layout::decodeValue(text(v));
      if (!key || !value || slotOf(*key) != slot) {
        ++bad;
        continue;
      }
      if (value->expiry_ms < now) continue;  // expired, not yet removed by a write
      out.push_back({slot, *key, value->state, value->expiry_ms});
    }
    if (bad != 0) malformed_.fetch_add(bad, std::memory_order_relaxed);
  }

  // Constant after construction.
  const RedisStoreOptions options_;
  const Clock& clock_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread thread_;

  // State below is used on the store's thread only.
  redisAsyncContext* ac_ = nullptr;
  Conn conn_ = Conn::kDown;
  bool closing_ = false;
  bool ever_connected_ = false;
  bool reported_down_ = false;
  std::uint64_t generation_ = 0;  // connection attempts, so a stale connect timer does nothing
  std::uint64_t next_id_ = 0;
  std::string sha_;
  std::deque<InFlight> inflight_;
  asio::steady_timer connect_timer_;
  asio::steady_timer reconnect_timer_;
  asio::steady_timer deadline_timer_;
  std::chrono::milliseconds backoff_;
  std::minstd_rand rng_;

  // Any thread.
  std::atomic<bool> connected_{false};
  std::atomic<std::uint64_t> commands_{0};
  std::atomic<std::uint64_t> errors_{0};
  std::atomic<std::uint64_t> timeouts_{0};
  std::atomic<std::uint64_t> reconnects_{0};
  std::atomic<std::uint64_t> malformed_{0};
  std::atomic<std::uint64_t> entries_written_{0};
  std::atomic<std::uint64_t> entries_read_{0};
  CommandLatency latency_;  // written on the store's thread only
};

Result<std::unique_ptr<RedisStore>> RedisStore::make(const RedisStoreOptions& options,
                                                     const Clock& clock) {
  if (options.host.empty()) return invalidArgument("redis host is empty");
  if (options.port <= 0 || options.port > 65535) return invalidArgument("redis port out of range");
  if (!redis_layout::validClusterName(options.cluster)) {
    return invalidArgument("cluster name must be 1-64 bytes without braces or spaces");
  }
  if (options.connect_timeout.count() <= 0 || options.command_timeout.count() <= 0) {
    return invalidArgument("redis timeouts must be positive");
  }
  if (options.reconnect_min.count() <= 0 || options.reconnect_max < options.reconnect_min) {
    return invalidArgument("redis reconnect backoff must be positive and min <= max");
  }
  if (options.entries_per_command == 0 || options.entries_per_command > 10'000) {
    return invalidArgument("entries_per_command must be 1..10000");
  }
  if (options.max_inflight == 0) return invalidArgument("max_inflight must be positive");
  auto impl = std::make_unique<Impl>(options, clock);
  impl->start();
  return std::unique_ptr<RedisStore>(new RedisStore(std::move(impl)));
}

RedisStore::RedisStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RedisStore::~RedisStore() {
  impl_->shutdown();
}

void RedisStore::write(std::vector<SnapshotEntry> entries, WriteCallback done) {
  impl_->write(std::move(entries), std::move(done));
}
void RedisStore::readSlots(std::vector<std::uint32_t> slots, ReadCallback done) {
  impl_->readSlots(std::move(slots), std::move(done));
}
SnapshotStoreStats RedisStore::stats() const {
  return impl_->stats();
}

}  // namespace throttlex::persistence

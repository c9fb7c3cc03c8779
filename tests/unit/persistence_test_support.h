// Helpers for the persistence tests: entries with chosen slots, blocking wrappers around the
// asynchronous store calls (bounded waits), and a real redis-server on a free loopback port.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "limiter/key.h"
#include "limiter/state.h"
#include "persistence/snapshot_store.h"

namespace throttlex::persistence::testing {

using namespace std::chrono_literals;

// A state of algorithm `a` whose expiry is `expiry_ms` (payload w1 as given).
inline State makeState(Algorithm a, std::int64_t expiry_ms, std::uint64_t w1 = 1) {
  State s;
  s.w0 = (std::uint64_t{static_cast<std::uint8_t>(a)} << 61) |
         (static_cast<std::uint64_t>(expiry_ms) << 18);
  s.w1 = w1;
  return s;
}

// A key hash in `slot` (the slot is the top 12 bits of lo), other bits from `rng`.
inline KeyHash keyInSlot(std::uint32_t slot, std::mt19937_64& rng) {
  const std::uint64_t low_mask = (std::uint64_t{1} << kSlotShift) - 1;
  return KeyHash{rng() | 1, (std::uint64_t{slot} << kSlotShift) | (rng() & low_mask)};
}

inline SnapshotEntry entry(std::uint32_t slot, std::mt19937_64& rng, std::int64_t expiry_ms,
                           std::uint64_t w1 = 1) {
  return {slot, keyInSlot(slot, rng), makeState(Algorithm::kTokenBucket, expiry_ms, w1), expiry_ms};
}

inline std::int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Bounded polling: true once `cond` holds, false after `limit`.
inline bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = 10s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return cond();
}

inline Status writeSync(SnapshotStore& store, std::vector<SnapshotEntry> entries) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  store.write(std::move(entries), [p](Status s) { p->set_value(std::move(s)); });
  if (f.wait_for(20s) != std::future_status::ready) {
    return Error{ErrorCode::kInternal, "write callback never came"};
  }
  return f.get();
}

inline Result<std::vector<SnapshotEntry>> readSync(SnapshotStore& store,
                                                   std::vector<std::uint32_t> slots) {
  using R = Result<std::vector<SnapshotEntry>>;
  auto p = std::make_shared<std::promise<R>>();
  auto f = p->get_future();
  store.readSlots(std::move(slots), [p](R r) { p->set_value(std::move(r)); });
  if (f.wait_for(20s) != std::future_status::ready) {
    return Error{ErrorCode::kInternal, "read callback never came"};
  }
  return f.get();
}

// A port the kernel just handed out on 127.0.0.1 (free now; a race with other processes is
// possible but unlikely, and RedisServer retries).
inline int freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// A synchronous hiredis connection, to inspect and corrupt what the store wrote.
class RedisClient {
 public:
  explicit RedisClient(int port) { c_ = redisConnectWithTimeout("127.0.0.1", port, timeval{1, 0}); }
  ~RedisClient() {
    if (c_ != nullptr) redisFree(c_);
  }
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;
  bool ok() const { return c_ != nullptr && c_->err == 0; }

  // Runs a command; returns the reply (nullptr on I/O error).
  std::unique_ptr<redisReply, void (*)(void*)> command(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    void* r = ok() ? redisCommandArgv(c_, static_cast<int>(argv.size()), argv.data(), lens.data())
                   : nullptr;
    return {static_cast<redisReply*>(r), freeReplyObject};
  }
  long long integer(const std::vector<std::string>& args) {
    auto r = command(args);
    return r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
  }
  long long usedMemory() {
    auto r = command({"INFO", "memory"});
    if (!r || r->type != REDIS_REPLY_STRING) return -1;
    const std::string info(r->str, r->len);
    const auto at = info.find("used_memory:");
    return at == std::string::npos ? -1 : std::stoll(info.substr(at + 12));
  }

 private:
  redisContext* c_ = nullptr;
};

// redis-server as a child process: no persistence, loopback only, stopped by PID.
class RedisServer {
 public:
  RedisServer() {
    for (int attempt = 0; attempt < 5 && pid_ <= 0; ++attempt) {
      port_ = freePort();
      if (!start()) stop();
    }
    REQUIRE_MESSAGE(pid_ > 0,
                    "could not start redis-server (is the redis-server package installed?)");
  }
  ~RedisServer() { stop(); }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }

  // Starts on port() and waits (bounded) until it answers PING.
  bool start() {
    const std::string port = std::to_string(port_);
    pid_ = ::fork();
    if (pid_ == 0) {
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", "/tmp", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    return eventually([&] {
             int status = 0;
             if (::waitpid(pid_, &status, WNOHANG) == pid_) {
               pid_ = -1;
               return true;  // exited: give up below
             }
             RedisClient c(port_);
             auto r = c.command({"PING"});
             return r && r->type == REDIS_REPLY_STATUS;
           }) &&
           pid_ > 0;
  }

  // kill -9, as in a crash.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  void pause() { ::kill(pid_, SIGSTOP); }
  void resume() { ::kill(pid_, SIGCONT); }

 private:
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace throttlex::persistence::testing

// A real redis-server for the tests of the Redis adapter (label `redis`): a child process on a
// free loopback port, stopped by PID, and a synchronous hiredis client to inspect what the store
// wrote. Waiting on another process is a bounded poll here (eventually()); the unit tests use
// fakes and wait on events instead.
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
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "limiter/clock.h"
#include "tests/unit/persistence_test_support.h"

namespace throttlex::persistence::testing {

using namespace std::chrono_literals;

// Wall-clock ms now: what the store compares expiries with.
inline std::int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             SystemClock().now().time_since_epoch())
      .count();
}

// Bounded polling of another process: true once `cond` holds, false after `limit`.
inline bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = 10s) {
  const SystemClock clock;
  const Instant end = clock.monotonic() + limit;
  while (clock.monotonic() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return cond();
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

// http-paced: HTTP/1.1 load at a fixed offered rate, for latency at a given load
// (docs/benchmarks.md).
//
// Why not wrk: wrk is closed-loop. Its delay() hook paces each connection on millisecond timers,
// so connections that answered together wake together and arrive in bursts, and a request that
// waits for a busy connection is not counted as waiting at all. Here request n is due at
// start + n / rate, evenly spaced whatever the server does; it goes out on any idle connection
// and its latency is measured from the moment it was due (no coordinated omission: a server that
// stalls shows as latency, not as a lower offered rate). The generator's own lateness (due → sent)
// is reported next to it, so a run where the generator could not keep up is visible.
//
// With --rate 0 it is closed-loop instead (each connection sends its next request as soon as the
// answer is in): the peak, measured with the same client as the latency.
//
// One thread, one Asio event loop, keep-alive connections; responses parsed with http_parser.
// With several --host, connection i goes to host i mod N (checks entering a cluster at every
// node, as behind a load balancer). Keys are uniform over 1..KEYS: the path is
// PREFIX + KEY_PREFIX + n + SUFFIX.
//
// Exit codes: 0 ok; 1 errors above 1% or nothing answered; 2 usage error; 3 cannot connect.
#include <http_parser.h>

#include <asio.hpp>
#include <chrono>
#include <cstdio>
#include <deque>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench/latency_histogram.h"
#include "bench/real_time.h"

namespace throttlex::bench {
namespace {

using asio::ip::tcp;
using Clock = RealTime;
using std::chrono::nanoseconds;

constexpr int kExitOk = 0, kExitErrors = 1, kExitUsage = 2, kExitUnreachable = 3;
constexpr auto kDrain = std::chrono::seconds(2);  // how long answers may still come after the end

struct Flags {
  std::vector<std::string> hosts{"127.0.0.1"};
  std::uint16_t port = 0;
  double rate = 0;
  std::size_t connections = 32;
  double duration_s = 10, warmup_s = 1;
  std::string prefix = "/v1/check?key=", key_prefix = "user:", suffix;
  std::uint64_t keys = 100'000;
  bool json = false;
};

struct Stats {
  LatencyHistogram latency;   // due → answer complete, measured window only
  LatencyHistogram lateness;  // due → written to a socket
  std::uint64_t answered = 0, ok = 0, non_2xx = 0, socket_errors = 0, unsent = 0;
};

class Generator;

// One keep-alive connection: at most one request outstanding.
struct Connection {
  Connection(asio::io_context& io, tcp::endpoint to) : socket(io), endpoint(to) {}
  tcp::socket socket;
  const tcp::endpoint endpoint;
  http_parser parser{};
  std::string request;
  std::array<char, 16384> buffer{};
  Clock::time_point due;
  bool connected = false, busy = false, complete = false;
};

class Generator {
 public:
  Generator(const Flags& f, std::vector<tcp::endpoint> endpoints)
      : flags_(f),
        endpoints_(std::move(endpoints)),
        timer_(io_),
        keys_(1, f.keys),
        interval_(f.rate > 0 ? nanoseconds(static_cast<std::int64_t>(1e9 / f.rate))
                             : nanoseconds(0)) {
    http_parser_settings_init(&settings_);
    settings_.on_message_complete = [](http_parser* p) {
      static_cast<Connection*>(p->data)->complete = true;
      return 0;
    };
  }

  // Connects every connection first (a server that cannot be reached is exit 3, not errors).
  bool connectAll() {
    for (std::size_t i = 0; i < flags_.connections; ++i) {
      auto c = std::make_unique<Connection>(io_, endpoints_[i % endpoints_.size()]);
      asio::error_code ec;
      c->socket.connect(c->endpoint, ec);
      if (ec) {
        std::cerr << "http-paced: cannot connect to " << c->endpoint << ": " << ec.message()
                  << "\n";
        return false;
      }
      prepare(*c);
      idle_.push_back(c.get());
      connections_.push_back(std::move(c));
    }
    return true;
  }

  // Runs the schedule, then waits up to kDrain for the last answers. The result lives in *this.
  const Stats& run() {
    start_ = Clock::now() + std::chrono::milliseconds(10);
    measure_from_ = start_ + toNs(flags_.warmup_s);
    end_ = measure_from_ + toNs(flags_.duration_s);
    if (closedLoop()) {
      timer_.expires_at(start_);
      timer_.async_wait([this](const asio::error_code& ec) {
        if (ec) return;
        while (!idle_.empty()) next(*idle_.back());
      });
      // Nothing is due after end_: stop waiting for answers kDrain later at most.
    } else {
      arm();
    }
    io_.run_until(end_ + kDrain);
    stats_.unsent += backlog_.size();
    return stats_;
  }

 private:
  bool closedLoop() const { return interval_.count() == 0; }

  // Closed loop: the connection's next request, due now (until the end).
  void next(Connection& c) {
    idle_.pop_back();
    const Clock::time_point now = Clock::now();
    if (now >= end_) return;
    send(c, now);
  }

  static nanoseconds toNs(double s) { return nanoseconds(static_cast<std::int64_t>(s * 1e9)); }

  void prepare(Connection& c) {
    c.connected = true;
    c.socket.set_option(tcp::no_delay(true));
    http_parser_init(&c.parser, HTTP_RESPONSE);
    c.parser.data = &c;
  }

  // Wakes at the next due time; every request due by then joins the backlog.
  void arm() {
    const Clock::time_point due = start_ + interval_ * next_;
    if (due >= end_) return;
    timer_.expires_at(due);
    timer_.async_wait([this](const asio::error_code& ec) {
      if (ec) return;
      const Clock::time_point now = Clock::now();
      for (Clock::time_point d = start_ + interval_ * next_; d <= now && d < end_;
           d = start_ + interval_ * ++next_) {
        backlog_.push_back(d);
      }
      dispatch();
      arm();
    });
  }

  void dispatch() {
    while (!backlog_.empty() && !idle_.empty()) {
      Connection* c = idle_.back();
      idle_.pop_back();
      send(*c, backlog_.front());
      backlog_.pop_front();
    }
  }

  void send(Connection& c, Clock::time_point due) {
    c.busy = true;
    c.complete = false;
    c.due = due;
    c.request = "GET " + flags_.prefix + flags_.key_prefix + std::to_string(keys_(rng_)) +
                flags_.suffix + " HTTP/1.1\r\nHost: " + c.endpoint.address().to_string() +
                "\r\n\r\n";
    const Clock::time_point now = Clock::now();
    if (due >= measure_from_) stats_.lateness.record(ns(now - due));
    asio::async_write(c.socket, asio::buffer(c.request),
                      [this, &c](const asio::error_code& ec, std::size_t) {
                        if (ec) return fail(c);
                        read(c);
                      });
  }

  void read(Connection& c) {
    c.socket.async_read_some(
        asio::buffer(c.buffer), [this, &c](const asio::error_code& ec, std::size_t n) {
          if (ec) return fail(c);
          const std::size_t parsed = http_parser_execute(&c.parser, &settings_, c.buffer.data(), n);
          if (HTTP_PARSER_ERRNO(&c.parser) != HPE_OK || parsed != n) return fail(c);
          if (!c.complete) return read(c);
          answered(c);
        });
  }

  void answered(Connection& c) {
    const Clock::time_point now = Clock::now();
    if (c.due >= measure_from_ && c.due < end_) {
      ++stats_.answered;
      stats_.latency.record(ns(now - c.due));
      if (c.parser.status_code / 100 == 2) {
        ++stats_.ok;
      } else {
        ++stats_.non_2xx;
      }
    }
    c.busy = false;
    if (!http_should_keep_alive(&c.parser)) return reconnect(c);
    idle_.push_back(&c);
    if (closedLoop()) return next(c);
    dispatch();
  }

  // A broken connection: its request counts as a socket error; a fresh one takes its place.
  void fail(Connection& c) {
    if (c.due >= measure_from_ && c.due < end_) ++stats_.socket_errors;
    c.busy = false;
    reconnect(c);
  }

  void reconnect(Connection& c) {
    asio::error_code ignored;
    c.socket.close(ignored);
    c.connected = false;
    c.socket.async_connect(c.endpoint, [this, &c](const asio::error_code& ec) {
      if (ec) {
        ++stats_.socket_errors;
        return;  // this connection stays out; the others carry on
      }
      prepare(c);
      idle_.push_back(&c);
      if (closedLoop()) return next(c);
      dispatch();
    });
  }

  static std::uint64_t ns(Clock::duration d) {
    return static_cast<std::uint64_t>(
        std::max<std::int64_t>(0, std::chrono::duration_cast<nanoseconds>(d).count()));
  }

  const Flags flags_;
  const std::vector<tcp::endpoint> endpoints_;
  asio::io_context io_;
  asio::steady_timer timer_;
  http_parser_settings settings_{};
  std::mt19937_64 rng_{std::random_device{}()};
  std::uniform_int_distribution<std::uint64_t> keys_;
  const nanoseconds interval_;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::vector<Connection*> idle_;
  std::deque<Clock::time_point> backlog_;  // due, not yet sent: every connection was busy
  std::int64_t next_ = 0;                  // the next request's number in the schedule
  Clock::time_point start_, measure_from_, end_;
  Stats stats_;
};

double ms(std::uint64_t ns) {
  return static_cast<double>(ns) / 1e6;
}

int report(const Flags& f, const Stats& s) {
  const double achieved = static_cast<double>(s.answered) / f.duration_s;
  const std::uint64_t errors = s.non_2xx + s.socket_errors + s.unsent;
  const double offered = f.rate > 0 ? f.rate * f.duration_s : static_cast<double>(s.answered);
  if (f.json) {
    nlohmann::json j = {
        {"offered_rate", f.rate},
        {"achieved_rate", achieved},
        {"answered", s.answered},
        {"ok", s.ok},
        {"non_2xx", s.non_2xx},
        {"socket_errors", s.socket_errors},
        {"unsent", s.unsent},
        {"latency_ms",
         {{"mean", s.latency.mean() / 1e6},
          {"p50", ms(s.latency.quantile(0.5))},
          {"p90", ms(s.latency.quantile(0.9))},
          {"p99", ms(s.latency.quantile(0.99))},
          {"p999", ms(s.latency.quantile(0.999))},
          {"max", ms(s.latency.max())}}},
        {"lateness_ms",
         {{"p50", ms(s.lateness.quantile(0.5))},
          {"p99", ms(s.lateness.quantile(0.99))},
          {"max", ms(s.lateness.max())}}},
    };
    std::cout << j.dump() << "\n";
  } else {
    const std::string load =
        f.rate > 0 ? "offered " + std::to_string(static_cast<std::uint64_t>(f.rate)) + "/s"
                   : std::string("closed loop");
    std::printf(
        "%s, achieved %.0f/s over %.1f s: %llu answered, %llu non-2xx, "
        "%llu socket errors, %llu never sent\n",
        load.c_str(), achieved, f.duration_s, static_cast<unsigned long long>(s.answered),
        static_cast<unsigned long long>(s.non_2xx),
        static_cast<unsigned long long>(s.socket_errors),
        static_cast<unsigned long long>(s.unsent));
    std::printf(
        "latency ms (due -> answered): mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f  "
        "p99.9 %.3f  max %.3f\n",
        s.latency.mean() / 1e6, ms(s.latency.quantile(0.5)), ms(s.latency.quantile(0.9)),
        ms(s.latency.quantile(0.99)), ms(s.latency.quantile(0.999)), ms(s.latency.max()));
    std::printf("generator lateness ms (due -> sent): p50 %.3f  p99 %.3f  max %.3f\n",
                ms(s.lateness.quantile(0.5)), ms(s.lateness.quantile(0.99)), ms(s.lateness.max()));
  }
  if (s.answered == 0) return kExitErrors;
  return static_cast<double>(errors) > 0.01 * offered ? kExitErrors : kExitOk;
}

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{
      "http-paced: HTTP/1.1 load at a fixed offered rate; latency from each request's "
      "due time"};
  app.add_option("--host", f.hosts, "Server address (IPv4 or IPv6 literal); repeat for several")
      ->capture_default_str();
  app.add_option("--port", f.port, "Server port")->required()->check(CLI::Range(1, 65535));
  app.add_option("--rate", f.rate,
                 "Requests/s offered, evenly spaced (0: closed loop, as fast as answers come)")
      ->required()
      ->check(CLI::Range(0.0, 1e7));
  app.add_option("--connections", f.connections, "Keep-alive connections")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  app.add_option("--duration", f.duration_s, "Measured seconds")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 86400.0));
  app.add_option("--warmup", f.warmup_s, "Unmeasured seconds first")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--prefix", f.prefix, "Path before the key")->capture_default_str();
  app.add_option("--key-prefix", f.key_prefix, "Keys are KEY_PREFIX + n")->capture_default_str();
  app.add_option("--suffix", f.suffix, "Path after the key (e.g. &limit=100&period=1m)");
  app.add_option("--keys", f.keys, "n is uniform over 1..KEYS")
      ->capture_default_str()
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 40));
  app.add_flag("--json", f.json, "One JSON object on stdout");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  std::vector<tcp::endpoint> endpoints;
  for (const std::string& host : f.hosts) {
    asio::error_code ec;
    const asio::ip::address address = asio::ip::make_address(host, ec);
    if (ec) {
      std::cerr << "http-paced: --host must be an IP address: " << host << "\n";
      return kExitUsage;
    }
    endpoints.emplace_back(address, f.port);
  }
  Generator generator(f, std::move(endpoints));
  if (!generator.connectAll()) return kExitUnreachable;
  return report(f, generator.run());
}

}  // namespace
}  // namespace throttlex::bench

int main(int argc, char** argv) {
  return throttlex::bench::main(argc, argv);
}

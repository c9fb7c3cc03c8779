// throttlex-bench: a load generator for ThrottleX nodes over the RPC API, through the client
// library. Usage and output: docs/throttlectl.md ("throttlex-bench").
//
// N connections (each its own Client: its own TCP connection and thread) send checks either
// asynchronously, C outstanding per connection (the client's adaptive batching forms the batches),
// or as checkBatch calls of B checks. With --rate the sends follow a fixed schedule (open loop)
// and latency is measured from the scheduled time. Runs for --warmup + --duration, then drains
// (each outstanding check ends within --deadline) and reports.
//
// Exit codes: 0 ok; 1 errors (plus fallbacks) above 1% of the checks, or no check completed;
// 2 usage error; 3 no node reachable.
#include <malloc.h>

#include <algorithm>
#include <iomanip>
#include <iostream>
#include <optional>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench/load_connection.h"
#include "limiter/limit.h"
#include "limiter/period.h"

namespace throttlex::bench {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;

constexpr int kExitOk = 0, kExitErrors = 1, kExitUsage = 2, kExitUnreachable = 3;
constexpr double kMaxErrorRate = 0.01;

// The flags as typed.
struct Flags {
  std::vector<std::string> nodes;
  std::string tls_ca, tls_cert, tls_key;
  std::size_t connections = 4;
  std::size_t concurrency = 16;
  std::size_t batch = 0;
  std::uint64_t keys = 10'000;
  std::string distribution = "uniform";
  double zipf_s = 1.1;
  std::string duration = "10s";
  std::string warmup = "1s";
  double rate = 0;
  std::uint64_t limit = 1000;
  std::string period = "1s";
  std::string algorithm = "token_bucket";
  std::string rule;
  std::string deadline = "1s";
  std::string on_unavailable = "error";
  std::string priority = "normal";
  double client_throttle = 2.0;
  std::string route = "owner";
  std::string key_prefix = "bench:";
  bool json = false;
};

// The flags, validated.
struct Config {
  Flags flags;
  Distribution distribution = Distribution::kUniform;
  nanoseconds duration{0}, warmup{0};
  milliseconds deadline{0};
  client::OnUnavailable on_unavailable = client::OnUnavailable::kReturnError;
  client::CheckSpec spec;
};

CLI::Validator periodValidator() {
  return CLI::Validator(
      [](std::string& s) {
        auto p = parsePeriod(s);
        return p ? std::string() : p.error().message;
      },
      "PERIOD");
}

// A period, or zero ("0", "0s", ...) for none; negative when invalid.
nanoseconds periodOrZero(const std::string& text) {
  const std::string number = text.substr(0, text.find_first_not_of("0123456789"));
  if (!number.empty() && number.find_first_not_of('0') == std::string::npos) {
    return parsePeriod("1" + text.substr(number.size())) ? nanoseconds(0) : nanoseconds(-1);
  }
  auto p = parsePeriod(text);
  return p ? *p : nanoseconds(-1);
}

void defineFlags(CLI::App& app, Flags& f) {
  app.add_option("--node", f.nodes,
                 "A node's RPC address HOST:PORT; repeat for several (env "
                 "THROTTLEX_NODE, comma-separated)")
      ->envname("THROTTLEX_NODE")
      ->delimiter(',')
      ->allow_extra_args(false)
      ->required();
  app.add_option("--tls-ca", f.tls_ca, "RPC TLS: the cluster CA certificate (PEM)")
      ->envname("THROTTLEX_TLS_CA");
  app.add_option("--tls-cert", f.tls_cert, "RPC TLS: the client certificate (PEM)")
      ->envname("THROTTLEX_TLS_CERT");
  app.add_option("--tls-key", f.tls_key, "RPC TLS: its key (PEM)")->envname("THROTTLEX_TLS_KEY");
  app.add_option("--connections", f.connections, "Independent clients (connection + thread)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("--concurrency", f.concurrency, "Outstanding checks per connection (checkAsync)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100'000));
  app.add_option("--batch", f.batch, "Use checkBatch with this many checks per call instead")
      ->check(CLI::Range(0, 100'000));
  app.add_option("--keys", f.keys, "Key space size")
      ->capture_default_str()
      ->check(CLI::Range(1, 10'000'000));
  app.add_option("--distribution", f.distribution, "uniform, zipf or hot (90% to 1% of keys)")
      ->capture_default_str()
      ->check(CLI::IsMember({"uniform", "zipf", "hot"}));
  app.add_option("--zipf-s", f.zipf_s, "Zipf exponent")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 10.0));
  app.add_option("--duration", f.duration, "Measured time")
      ->capture_default_str()
      ->check(periodValidator());
  app.add_option("--warmup", f.warmup, "Unmeasured load before --duration (0: none)")
      ->capture_default_str();
  app.add_option("--rate", f.rate, "Target checks/s overall, open loop (0: as fast as possible)")
      ->check(CLI::NonNegativeNumber);
  auto* rule = app.add_option("--rule", f.rule, "A named rule instead of the inline limit");
  auto* limit = app.add_option("--limit", f.limit, "Inline limit per key")
                    ->capture_default_str()
                    ->check(CLI::NonNegativeNumber);
  auto* period = app.add_option("--period", f.period, "Inline limit's period")
                     ->capture_default_str()
                     ->check(periodValidator());
  auto* algorithm =
      app.add_option("--algorithm", f.algorithm, "Inline limit's algorithm")->capture_default_str();
  rule->excludes(limit)->excludes(period)->excludes(algorithm);
  app.add_option("--deadline", f.deadline, "Per check or batch, failover included")
      ->capture_default_str()
      ->check(periodValidator());
  app.add_option("--priority", f.priority,
                 "Every check's priority: normal, critical or sheddable (docs/overload.md)")
      ->check(CLI::IsMember({"normal", "critical", "sheddable"}));
  app.add_option("--client-throttle", f.client_throttle,
                 "The client's adaptive throttling while a node sheds (ClientOptions::"
                 "overload_throttle, docs/overload.md): K >= 1, or 0 for off")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e6));
  app.add_option("--on-unavailable", f.on_unavailable, "error, open or closed")
      ->capture_default_str()
      ->check(CLI::IsMember({"error", "open", "closed"}));
  app.add_option("--route", f.route,
                 "owner: the client sends each check to its key's owner; entry: connection i "
                 "enters at node i and the nodes forward")
      ->capture_default_str()
      ->check(CLI::IsMember({"owner", "entry"}));
  app.add_option("--key-prefix", f.key_prefix, "Keys are PREFIX + index")->capture_default_str();
  app.add_flag("--json", f.json, "Print one JSON object to stdout instead of the report");
}

throttlex::Result<Config> validate(const Flags& f) {
  Config c;
  c.flags = f;
  c.distribution = f.distribution == "zipf"  ? Distribution::kZipf
                   : f.distribution == "hot" ? Distribution::kHot
                                             : Distribution::kUniform;
  c.duration = *parsePeriod(f.duration);  // validated by CLI11
  c.warmup = periodOrZero(f.warmup);
  if (c.warmup < nanoseconds(0))
    return invalidArgument("--warmup: invalid period '" + f.warmup + "'");
  c.deadline = std::chrono::duration_cast<milliseconds>(*parsePeriod(f.deadline));
  c.on_unavailable = f.on_unavailable == "open"     ? client::OnUnavailable::kFailOpen
                     : f.on_unavailable == "closed" ? client::OnUnavailable::kFailClosed
                                                    : client::OnUnavailable::kReturnError;
  c.spec.priority = f.priority == "critical"    ? client::CheckSpec::Priority::kCritical
                    : f.priority == "sheddable" ? client::CheckSpec::Priority::kSheddable
                                                : client::CheckSpec::Priority::kNormal;
  if (!f.rule.empty()) {
    c.spec.rule = f.rule;
    return c;
  }
  auto algorithm = parseAlgorithm(f.algorithm);
  if (!algorithm) return algorithm.error();
  // Both enums carry the wire protocol's values.
  c.spec.algorithm = static_cast<client::Algorithm>(static_cast<std::uint8_t>(*algorithm));
  c.spec.limit = f.limit;
  c.spec.period = std::chrono::duration_cast<milliseconds>(*parsePeriod(f.period));
  return c;
}

// Open-loop spacing of sends on one connection; 0 for closed loop.
nanoseconds sendInterval(const Config& c) {
  if (c.flags.rate <= 0) return nanoseconds(0);
  const double per_send = static_cast<double>(std::max<std::size_t>(1, c.flags.batch)) *
                          static_cast<double>(c.flags.connections) / c.flags.rate;
  return nanoseconds(std::max<std::int64_t>(1, static_cast<std::int64_t>(per_send * 1e9)));
}

struct Totals {
  Tally tally;
  client::ClientStats stats;  // measured phase only
  std::string first_error;
  double seconds = 0;
};

double us(std::uint64_t ns) {
  return static_cast<double>(ns) / 1000.0;
}

// Open loop only: the generator's lateness (LoadConnection::wakeLateness / sendLateness).
struct Lateness {
  LatencyHistogram wake, send;
};

nlohmann::json latenessJson(const LatencyHistogram& h) {
  return {{"p50", us(h.quantile(0.5))}, {"p99", us(h.quantile(0.99))}, {"max", us(h.max())}};
}

nlohmann::json reportJson(const Config& c, const Totals& t, const LatencyHistogram& h,
                          const Lateness& late) {
  const Tally& y = t.tally;
  const std::uint64_t answered = y.allowed + y.limited;
  const std::uint64_t checks = answered + y.shed + y.errors + y.fallbacks;
  nlohmann::json limit = c.spec.rule.empty()
                             ? nlohmann::json{{"limit", c.spec.limit},
                                              {"period", formatPeriod(c.spec.period)},
                                              {"algorithm", c.flags.algorithm}}
                             : nlohmann::json{{"rule", c.spec.rule}};
  return {
      {"nodes", c.flags.nodes},
      {"connections", c.flags.connections},
      {"concurrency", c.flags.batch > 0 ? 1 : c.flags.concurrency},
      {"batch", c.flags.batch},
      {"keys", c.flags.keys},
      {"distribution", c.flags.distribution},
      {"zipf_s", c.flags.zipf_s},
      {"rate", c.flags.rate},
      {"limit", limit},
      {"duration_s", t.seconds},
      {"warmup_s", std::chrono::duration<double>(c.warmup).count()},
      {"checks", checks},
      {"throughput", t.seconds > 0 ? static_cast<double>(answered) / t.seconds : 0.0},
      // Decided within the measured window: what a node behind its offered load really served.
      {"goodput", t.seconds > 0 ? static_cast<double>(answered - y.late) / t.seconds : 0.0},
      {"decided_after_window", y.late},
      {"allowed", y.allowed},
      {"limited", y.limited},
      {"errors", y.errors},
      {"fallbacks", y.fallbacks},
      {"degraded", y.degraded},
      {"shed", y.shed},
      {"shed_locally", y.shed_locally},
      {"route", c.flags.route},
      {"error_rate",
       checks == 0 ? 0.0
                   : static_cast<double>(y.errors + y.fallbacks) / static_cast<double>(checks)},
      {"first_error", t.first_error},
      {"latency_us",
       {{"p50", us(h.quantile(0.5))},
        {"p90", us(h.quantile(0.9))},
        {"p99", us(h.quantile(0.99))},
        {"p99.9", us(h.quantile(0.999))},
        {"max", us(h.max())},
        {"mean", h.mean() / 1000.0}}},
      // Inside latency_us already; large values mean the generator itself could not keep to its
      // schedule (send) or, with a small wake, that every outstanding slot was busy.
      {"generator_lateness_us", c.flags.rate > 0 ? nlohmann::json{{"wake", latenessJson(late.wake)},
                                                                  {"send", latenessJson(late.send)}}
                                                 : nlohmann::json(nullptr)},
      {"client",
       {{"calls", t.stats.calls},
        {"checks", t.stats.checks},
        {"avg_batch", t.stats.calls == 0 ? 0.0
                                         : static_cast<double>(t.stats.checks) /
                                               static_cast<double>(t.stats.calls)},
        {"failovers", t.stats.failovers},
        {"fallbacks", t.stats.fallbacks}}},
  };
}

void printReport(std::ostream& out, const nlohmann::json& r) {
  const auto num = [](const nlohmann::json& v) { return v.get<double>(); };
  const auto& l = r["latency_us"];
  const auto& cl = r["client"];
  out << std::fixed << std::setprecision(1);
  out << "checks      " << r["checks"] << " in " << num(r["duration_s"])
      << " s: " << num(r["throughput"]) << " decisions/s\n"
      << "allowed     " << r["allowed"] << "\nlimited     " << r["limited"] << "\nerrors      "
      << r["errors"] << "\nfallbacks   " << r["fallbacks"] << "\nshed        " << r["shed"] << " ("
      << r["shed_locally"] << " by the client)"
      << "\ndegraded    " << r["degraded"] << "\n"
      << "latency us  p50 " << num(l["p50"]) << "  p90 " << num(l["p90"]) << "  p99 "
      << num(l["p99"]) << "  p99.9 " << num(l["p99.9"]) << "  max " << num(l["max"]) << "  mean "
      << num(l["mean"]) << "\n";
  if (const auto& g = r["generator_lateness_us"]; !g.is_null()) {
    out << "generator   late to wake p50 " << num(g["wake"]["p50"]) << "  p99 "
        << num(g["wake"]["p99"]) << "  max " << num(g["wake"]["max"]) << "; to send p50 "
        << num(g["send"]["p50"]) << "  p99 " << num(g["send"]["p99"]) << "  max "
        << num(g["send"]["max"]) << " us\n";
  }
  out << "client      " << cl["calls"] << " calls, " << cl["checks"] << " checks, avg batch "
      << std::setprecision(2) << num(cl["avg_batch"]) << ", failovers " << cl["failovers"] << "\n";
  if (!r["first_error"].get<std::string>().empty()) {
    out << "first error " << r["first_error"].get<std::string>() << "\n";
  }
}

client::ClientStats sumStats(const std::vector<std::unique_ptr<LoadConnection>>& conns) {
  client::ClientStats sum;
  for (const auto& c : conns) {
    const client::ClientStats s = c->stats();
    sum.calls += s.calls;
    sum.checks += s.checks;
    sum.fallbacks += s.fallbacks;
    sum.failovers += s.failovers;
    sum.nodes_marked_down += s.nodes_marked_down;
  }
  return sum;
}

// One progress line: checks/s since the last line (warmup included), p99 of the measured phase
// so far, errors so far. `completed` carries the running total between calls.
void printProgress(const std::vector<std::unique_ptr<LoadConnection>>& conns, nanoseconds elapsed,
                   nanoseconds since_last, bool measuring, std::uint64_t& completed) {
  std::uint64_t now_completed = 0, failed = 0;
  auto snapshot = std::make_unique<LatencyHistogram>();  // 18 KB: not on the stack
  for (const auto& c : conns) {
    now_completed += c->completed();
    const Tally t = c->tally();
    failed += t.errors + t.fallbacks;
    snapshot->merge(c->latency());
  }
  const double secs = std::chrono::duration<double>(since_last).count();
  std::cerr << "throttlex-bench: "
            << std::chrono::duration_cast<std::chrono::seconds>(elapsed).count() << "s "
            << (measuring ? "" : "(warmup) ")
            << static_cast<std::uint64_t>(static_cast<double>(now_completed - completed) / secs)
            << " checks/s, p99 " << snapshot->quantile(0.99) / 1000 << " us, errors " << failed
            << std::endl;
  completed = now_completed;
}

// Prints the progress line once a second until plan.end; returns the client stats at
// plan.measure_from, so that warmup calls can be subtracted.
client::ClientStats watch(const LoadPlan& plan, SteadyTime start,
                          const std::vector<std::unique_ptr<LoadConnection>>& conns) {
  client::ClientStats at_measure_start;
  bool measuring = false;
  SteadyTime next_tick = start + std::chrono::seconds(1), last_tick = start;
  std::uint64_t completed = 0;
  while (true) {
    SteadyTime wake = std::min(next_tick, plan.end);
    if (!measuring) wake = std::min(wake, plan.measure_from);
    std::this_thread::sleep_until(wake);
    const SteadyTime now = RealTime::now();
    if (!measuring && now >= plan.measure_from) {
      at_measure_start = sumStats(conns);
      measuring = true;
    }
    if (now >= next_tick) {
      printProgress(conns, now - start, now - last_tick, measuring, completed);
      last_tick = now;
      next_tick += std::chrono::seconds(1);
    }
    if (now >= plan.end) return at_measure_start;
  }
}

// One client per --connections; connection i enters the cluster at node i (mod the list), so the
// load spreads over the nodes. On failure: the exit code, the reason printed.
std::optional<int> connectAll(const Config& c, std::vector<std::unique_ptr<client::Client>>& out) {
  client::ClientOptions options;
  options.nodes = c.flags.nodes;
  options.deadline = c.deadline;
  options.route_to_owner = c.flags.route == "owner";
  options.on_unavailable = c.on_unavailable;
  options.overload_throttle = c.flags.client_throttle;
  options.tls_ca = c.flags.tls_ca;
  options.tls_cert = c.flags.tls_cert;
  options.tls_key = c.flags.tls_key;
  for (std::size_t i = 0; i < c.flags.connections; ++i) {
    std::rotate(options.nodes.begin(),
                options.nodes.begin() + static_cast<std::ptrdiff_t>(i % c.flags.nodes.size()),
                options.nodes.end());
    auto client = client::Client::connect(options);
    options.nodes = c.flags.nodes;
    if (!client) {
      std::cerr << "throttlex-bench: " << client.error().message << "\n";
      return client.error().code == client::ErrorCode::kInvalidArgument ? kExitUsage
                                                                        : kExitUnreachable;
    }
    out.push_back(std::move(*client));
  }
  return std::nullopt;
}

// The connections' counts, latencies and first error, added into `totals`, `latency`, `late`.
void addUp(const std::vector<std::unique_ptr<LoadConnection>>& conns, Totals& totals,
           LatencyHistogram& latency, Lateness& late) {
  for (const auto& conn : conns) {
    latency.merge(conn->latency());
    late.wake.merge(conn->wakeLateness());
    late.send.merge(conn->sendLateness());
    const Tally t = conn->tally();
    totals.tally.allowed += t.allowed;
    totals.tally.limited += t.limited;
    totals.tally.errors += t.errors;
    totals.tally.fallbacks += t.fallbacks;
    totals.tally.degraded += t.degraded;
    totals.tally.shed += t.shed;
    totals.tally.shed_locally += t.shed_locally;
    totals.tally.late += t.late;
    if (totals.first_error.empty()) totals.first_error = conn->firstError();
  }
}

// Prints the report; the exit code: errors when no check completed or more than 1% failed.
int finish(const Config& c, const Totals& totals, const LatencyHistogram& latency,
           const Lateness& late) {
  const nlohmann::json report = reportJson(c, totals, latency, late);
  if (c.flags.json) {
    std::cout << report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    printReport(std::cout, report);
  }
  const std::uint64_t failed = totals.tally.errors + totals.tally.fallbacks;
  const std::uint64_t checks = report["checks"].get<std::uint64_t>();
  if (checks == 0) {
    std::cerr << "throttlex-bench: no check completed\n";
    return kExitErrors;
  }
  if (static_cast<double>(failed) > kMaxErrorRate * static_cast<double>(checks)) {
    std::cerr << "throttlex-bench: " << failed << " of " << checks
              << " checks failed (more than 1%); first: " << totals.first_error << "\n";
    return kExitErrors;
  }
  return kExitOk;
}

int run(int argc, char** argv) {
  CLI::App app("throttlex-bench: load generator for ThrottleX nodes (RPC, client library)",
               "throttlex-bench");
  app.footer(
      "Exit codes: 0 ok; 1 errors above 1% or no check completed; 2 usage error; "
      "3 no node reachable.");
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "throttlex-bench: " + std::string(e.what()) +
           "\nRun with --help for more information.\n";
  });
  Flags flags;
  defineFlags(app, flags);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  auto config = validate(flags);
  if (!config) {
    std::cerr << "throttlex-bench: " << config.error().message << "\n";
    return kExitUsage;
  }
  const Config& c = *config;

  std::vector<std::unique_ptr<client::Client>> clients;
  if (const std::optional<int> failed = connectAll(c, clients)) return *failed;

  LoadPlan plan;
  plan.spec = c.spec;
  plan.key_prefix = c.flags.key_prefix;
  plan.concurrency = c.flags.concurrency;
  plan.batch = c.flags.batch;
  plan.interval = sendInterval(c);
  const SteadyTime start = RealTime::now();
  plan.measure_from = start + c.warmup;
  plan.end = plan.measure_from + c.duration;

  auto zipf =
      c.distribution == Distribution::kZipf ? makeZipfTable(c.flags.keys, c.flags.zipf_s) : nullptr;
  std::vector<std::unique_ptr<LoadConnection>> conns;
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < clients.size(); ++i) {
    const auto stagger =
        plan.interval * static_cast<std::int64_t>(i) / static_cast<std::int64_t>(clients.size());
    conns.push_back(std::make_unique<LoadConnection>(
        std::move(clients[i]), plan, KeyPicker(c.distribution, c.flags.keys, zipf, 0x7e57 + i),
        start + stagger));
  }
  for (auto& conn : conns) threads.emplace_back([&conn] { conn->run(); });
  Totals totals;
  const client::ClientStats before = watch(plan, start, conns);
  for (std::thread& t : threads) t.join();
  const client::ClientStats after = sumStats(conns);
  totals.stats = {after.calls - before.calls, after.checks - before.checks,
                  after.fallbacks - before.fallbacks, after.failovers - before.failovers,
                  after.nodes_marked_down - before.nodes_marked_down};
  totals.seconds = std::chrono::duration<double>(c.duration).count();

  // ~18 KB each: not on the stack.
  auto latency = std::make_unique<LatencyHistogram>();
  auto late = std::make_unique<Lateness>();
  addUp(conns, totals, *latency, *late);
  return finish(c, totals, *latency, *late);
}

}  // namespace
}  // namespace throttlex::bench

int main(int argc, char** argv) {
  // A load generator frees and reallocates large message buffers many times a second; glibc's
  // default trim hands that memory back to the kernel each time (page faults and TLB shootdowns
  // on every call). Keep it: measured about 2x less client CPU per check in batches. Setting it
  // freezes glibc's self-raising mmap threshold at 128 KiB, which a batch of 1,000 specs or
  // results (136 and 152 bytes each) passes: without the second call every batch's vectors were
  // mmapped and unmapped, 2.3x slower (docs/benchmarks.md, "Then and now").
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  return throttlex::bench::run(argc, argv);
}

// throttlectl's flags as typed, and their conversion into client requests.
//
// Every failure here is a usage error (exit 2): it is found before anything is sent. Periods and
// algorithms are parsed by the limiter's own parsers, so throttlectl accepts exactly the spellings
// the node, the HTTP API and the rules file accept.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "limiter/clock.h"
#include "limiter/result.h"
#include "throttlex/client.h"

namespace throttlex::cli {

enum class OutputFormat { kTable, kJson };

// The global flags, read once in main().
struct Config {
  std::vector<std::string> nodes;              // --node, or THROTTLEX_NODE (comma-separated)
  OutputFormat output = OutputFormat::kTable;  // -o
  std::chrono::milliseconds timeout{2000};     // --timeout: the deadline of each call
  std::string tls_ca, tls_cert, tls_key;       // --tls-*, or THROTTLEX_TLS_*: PEM files
  const Clock* clock = nullptr;  // main()'s SystemClock: the waits of `rules` commands
};

// KEY with either --rule or an inline limit: what check, inspect and reset take.
struct TargetArgs {
  std::string key;
  std::string rule;
  std::optional<std::uint64_t> limit;
  std::string period;     // as typed
  std::string algorithm;  // as typed; empty: token_bucket
  std::uint64_t burst = 0;
  std::int64_t hits = 1;  // negative: a refund
  std::string release;    // a concurrency rule's lease id to release (hex); empty: none
  std::string renew;      // a concurrency rule's lease id to renew (hex); empty: none
};

// rules set NAME ...
struct RuleArgs {
  std::string name;
  std::uint64_t limit = 0;
  std::string period;
  std::string algorithm;
  std::uint64_t burst = 0;
  bool shadow = false;
  std::string degraded = "share";  // share | allow | deny
  std::string overload = "allow";  // allow | deny
};

// throttlectl report (validated by CLI11: range, outcome names).
struct ReportArgs {
  std::string rule;
  std::optional<double> latency_ms;
  std::string outcome = "ok";
  int count = 1;
};

throttlex::Result<client::CheckSpec> makeCheckSpec(const TargetArgs& args);
// throttlectl atomic: "RULE=KEY" per check (the rule name has no '='; the key may).
struct AtomicArgs {
  std::vector<std::string> checks;
  std::uint64_t hits = 1;
};
throttlex::Result<std::vector<client::CheckSpec>> makeAtomicSpecs(const AtomicArgs& args);
client::Report makeReport(const ReportArgs& args);
throttlex::Result<client::Rule> makeRule(const RuleArgs& args);
// A period spelling ("2s", "500ms") in milliseconds.
throttlex::Result<std::chrono::milliseconds> parseMillis(std::string_view text);
// Messages for CLI11 validators: empty when the text parses.
std::string periodProblem(std::string_view text);
std::string algorithmProblem(std::string_view text);

std::string_view nameOf(client::Algorithm algorithm);    // "token_bucket", ...; "unknown"
std::string_view nameOf(client::DegradedPolicy policy);  // "share", "allow", "deny"
std::string_view nameOf(client::OverloadPolicy policy);  // "allow", "deny"

}  // namespace throttlex::cli

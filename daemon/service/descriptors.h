// Rules in envoyproxy/ratelimit's configuration shape (docs/envoy.md): one domain per file, a tree
// of descriptors whose leaves carry a limit. A request's descriptor (a list of key/value entries,
// as Envoy sends them) walks the tree entry by entry; the node it ends on, at exactly its depth,
// gives the limit. At each level an entry matches, in this order: the child with its key and
// value, a child with its key and a wildcard value ("prefix*"), the child with its key and no value
// (one counter per value).
//
// Every leaf with a limit becomes a named rule of the RuleSet (daemon/service/rules.h), so checks
// on it go through the same path as every other check: keyed, owned, forwarded, snapshotted.
//
//   domain: messaging
//   descriptors:
//     - key: message_type
//       value: marketing
//       descriptors:
//         - key: to_number
//           rate_limit: {unit: day, requests_per_unit: 5}
//
// Fields: key (required), value, rate_limit {unit, requests_per_unit, unlimited, name, replaces:
// [{name}]}, shadow_mode, detailed_metric, descriptors; ThrottleX's own algorithm, burst and
// degraded inside rate_limit. Envoy's shape uses fixed windows aligned to the unit unless
// `algorithm` says otherwise.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/service/rules.h"
#include "limiter/result.h"

namespace YAML {
class Node;
}

namespace throttlex {

// RateLimitResponse.RateLimit.Unit of Envoy's v3 API; the wire values equal these.
enum class RateUnit : std::uint8_t {
  kUnknown = 0,
  kSecond = 1,
  kMinute = 2,
  kHour = 3,
  kDay = 4,
  kMonth = 5,
  kYear = 6,
};
// Seconds in one unit (a month is 30 days and a year 365, as envoyproxy/ratelimit counts them).
std::int64_t unitSeconds(RateUnit unit);

// What a matched leaf says.
struct DescriptorLimit {
  std::string rule;  // the named rule that holds its limit (empty when unlimited)
  std::string name;  // rate_limit.name (what `replaces` refers to); may be empty
  std::vector<std::string> replaces;
  RateUnit unit = RateUnit::kUnknown;
  std::uint32_t requests_per_unit = 0;
  bool unlimited = false;
  bool shadow = false;
  bool detailed_metric = false;
};

class DescriptorNode {
 public:
  // The child an entry leads to (see the header comment), or nullptr.
  const DescriptorNode* child(std::string_view key, std::string_view value) const;
  const std::optional<DescriptorLimit>& limit() const { return limit_; }

 private:
  friend class DomainParser;
  struct Children {
    std::map<std::string, std::unique_ptr<DescriptorNode>, std::less<>> by_value;
    std::vector<std::pair<std::string, std::unique_ptr<DescriptorNode>>> wildcards;  // prefixes
    std::unique_ptr<DescriptorNode> any;  // key without a value
  };
  std::map<std::string, Children, std::less<>> children_;
  std::optional<DescriptorLimit> limit_;
};

struct DescriptorEntry {
  std::string_view key;
  std::string_view value;
};

class Domain {
 public:
  const std::string& name() const { return name_; }
  // `atomic: true` (ThrottleX's, beside `domain:`): a request's descriptors are all or nothing
  // (Router::checkAtomic()); Envoy's own semantics (each descriptor spends alone) otherwise.
  bool atomic() const { return atomic_; }
  // The limit for one request descriptor, or nullptr (no limit applies: the descriptor is OK).
  const DescriptorLimit* match(std::span<const DescriptorEntry> entries) const;

 private:
  friend class DomainParser;
  std::string name_;
  bool atomic_ = false;
  DescriptorNode root_;
};

// The check key of a descriptor under its rule: its values in order, unambiguous ("=" and ","
// separate, "%" escapes them), e.g. "message_type=marketing,to_number=2061234567".
std::string descriptorKey(std::span<const DescriptorEntry> entries);

// Parses a file in Envoy's shape (`root` has `domain:`). The rules it makes are appended to
// `rules`, named "<domain>.<key>[_<value>]..." (or rate_limit.name when it is a valid rule name).
Result<std::shared_ptr<const Domain>> parseDomain(const YAML::Node& root, std::vector<Rule>& rules);

}  // namespace throttlex

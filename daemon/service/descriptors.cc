#include "daemon/service/descriptors.h"

#include <set>

#include <yaml-cpp/yaml.h>

#include "daemon/service/rule_yaml.h"

namespace throttlex {

std::int64_t unitSeconds(RateUnit unit) {
  switch (unit) {
    case RateUnit::kSecond:
      return 1;
    case RateUnit::kMinute:
      return 60;
    case RateUnit::kHour:
      return 3'600;
    case RateUnit::kDay:
      return 86'400;
    case RateUnit::kMonth:
      return 30 * 86'400;
    case RateUnit::kYear:
      return 365 * 86'400;
    case RateUnit::kUnknown:
      break;
  }
  return 0;
}

const DescriptorNode* DescriptorNode::child(std::string_view key, std::string_view value) const {
  const auto it = children_.find(key);
  if (it == children_.end()) return nullptr;
  const Children& c = it->second;
  if (const auto v = c.by_value.find(value); v != c.by_value.end()) return v->second.get();
  for (const auto& [prefix, node] : c.wildcards) {
    if (value.starts_with(prefix)) return node.get();
  }
  return c.any.get();
}

const DescriptorLimit* Domain::match(std::span<const DescriptorEntry> entries) const {
  if (entries.empty()) return nullptr;
  const DescriptorNode* node = &root_;
  for (const DescriptorEntry& e : entries) {
    node = node->child(e.key, e.value);
    if (node == nullptr) return nullptr;
  }
  // Only a leaf at exactly the request's depth counts (a shorter or longer descriptor is
  // unlimited).
  return node->limit() ? &*node->limit() : nullptr;
}

namespace {

void appendEscaped(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (const char c : text) {
    if (c == '%' || c == ',' || c == '=') {
      out += '%';
      out += kHex[static_cast<unsigned char>(c) >> 4];
      out += kHex[static_cast<unsigned char>(c) & 0xF];
    } else {
      out += c;
    }
  }
}

}  // namespace

std::string descriptorKey(std::span<const DescriptorEntry> entries) {
  std::string key;
  for (const DescriptorEntry& e : entries) {
    if (!key.empty()) key += ',';
    appendEscaped(key, e.key);
    key += '=';
    appendEscaped(key, e.value);
  }
  return key;
}

// Builds a Domain and its rules from the YAML tree; every error names the line.
class DomainParser {
 public:
  explicit DomainParser(std::vector<Rule>& rules) : rules_(rules) {}

  Result<std::shared_ptr<const Domain>> parse(const YAML::Node& root) {
    static const std::set<std::string> kKnown = {"domain", "descriptors", "atomic"};
    if (auto st = knownFields(root, kKnown, "the file"); !st) return st.error();
    auto domain = std::make_shared<Domain>();
    domain->name_ = root["domain"].as<std::string>();
    if (domain->name_.empty()) return at(root["domain"], "'domain' must not be empty");
    if (auto st = validateRuleName(domain->name_); !st)
      return at(root["domain"], st.error().message);
    if (const YAML::Node atomic = root["atomic"]) {
      if (!atomic.IsScalar() || (atomic.Scalar() != "true" && atomic.Scalar() != "false")) {
        return at(atomic, "'atomic' must be true or false");
      }
      domain->atomic_ = atomic.Scalar() == "true";
    }
    if (const YAML::Node list = root["descriptors"]) {
      if (auto st = children(list, domain->name_, domain->root_); !st) return st.error();
    }
    return std::shared_ptr<const Domain>(std::move(domain));
  }

 private:
  static Error at(const YAML::Node& node, const std::string& message) {
    return invalidArgument("line " + std::to_string(node.Mark().line + 1) + ": " + message);
  }

  static Status knownFields(const YAML::Node& node, const std::set<std::string>& known,
                            const std::string& what) {
    if (!node.IsMap()) return at(node, what + ": expected a mapping");
    for (const auto& kv : node) {
      const auto field = kv.first.as<std::string>();
      if (!known.contains(field)) return at(kv.first, what + ": unknown field '" + field + "'");
    }
    return Ok{};
  }

  Status children(const YAML::Node& list, const std::string& path, DescriptorNode& parent) {
    if (list.IsNull()) return Ok{};
    if (!list.IsSequence()) return at(list, "'descriptors' must be a list");
    for (const YAML::Node& d : list) {
      if (auto st = descriptor(d, path, parent); !st) return st;
    }
    return Ok{};
  }

  Status descriptor(const YAML::Node& d, const std::string& parent_path, DescriptorNode& parent) {
    static const std::set<std::string> kKnown = {"key",         "value",           "rate_limit",
                                                 "shadow_mode", "detailed_metric", "descriptors"};
    if (auto st = knownFields(d, kKnown, "descriptor"); !st) return st;
    if (!d["key"]) return at(d, "descriptor: missing 'key'");
    const std::string key = d["key"].as<std::string>();
    if (key.empty()) return at(d["key"], "descriptor: 'key' must not be empty");
    const std::string value = d["value"] ? d["value"].as<std::string>() : std::string();
    auto slot = place(parent, key, value);
    if (!slot)
      return at(d, "descriptor '" + key + (value.empty() ? "" : "_" + value) +
                       "' is defined twice at this level");
    auto node = std::make_unique<DescriptorNode>();
    const std::string path = parent_path + "." + key + (value.empty() ? "" : "_" + value);
    if (const YAML::Node rl = d["rate_limit"]) {
      auto limit = rateLimit(rl, d, path);
      if (!limit) return limit.error();
      node->limit_ = std::move(*limit);
    }
    if (const YAML::Node list = d["descriptors"]) {
      if (auto st = children(list, path, *node); !st) return st;
    }
    **slot = std::move(node);
    return Ok{};
  }

  // Where a child with this key and value goes; an error when the place is taken.
  static std::optional<std::unique_ptr<DescriptorNode>*> place(DescriptorNode& parent,
                                                               const std::string& key,
                                                               const std::string& value) {
    DescriptorNode::Children& c = parent.children_[key];
    if (value.empty()) {
      if (c.any) return std::nullopt;
      return &c.any;
    }
    if (value.ends_with('*')) {
      const std::string prefix = value.substr(0, value.size() - 1);
      for (auto& [p, n] : c.wildcards) {
        if (p == prefix) return std::nullopt;
      }
      c.wildcards.emplace_back(prefix, nullptr);
      return &c.wildcards.back().second;
    }
    auto [it, fresh] = c.by_value.try_emplace(value);
    if (!fresh) return std::nullopt;
    return &it->second;
  }

  Result<DescriptorLimit> rateLimit(const YAML::Node& rl, const YAML::Node& d,
                                    const std::string& path) {
    static const std::set<std::string> kKnown = {
        "unit",  "requests_per_unit", "unlimited", "name",    "replaces", "algorithm",
        "burst", "degraded",          "overload",  "adaptive"};
    if (auto st = knownFields(rl, kKnown, "rate_limit"); !st) return st.error();
    DescriptorLimit limit;
    if (d["shadow_mode"]) limit.shadow = d["shadow_mode"].as<bool>();
    if (d["detailed_metric"]) limit.detailed_metric = d["detailed_metric"].as<bool>();
    if (rl["name"]) limit.name = rl["name"].as<std::string>();
    if (const YAML::Node rep = rl["replaces"]) {
      if (!rep.IsSequence()) return at(rep, "'replaces' must be a list of {name: ...}");
      for (const YAML::Node& r : rep) {
        if (!r.IsMap() || !r["name"]) return at(r, "'replaces' entries need a 'name'");
        limit.replaces.push_back(r["name"].as<std::string>());
      }
    }
    if (rl["unlimited"] && rl["unlimited"].as<bool>()) {
      limit.unlimited = true;
      return limit;
    }
    if (!rl["unit"]) return at(rl, "rate_limit: missing 'unit'");
    if (!rl["requests_per_unit"]) return at(rl, "rate_limit: missing 'requests_per_unit'");
    limit.unit = parseUnit(rl["unit"].as<std::string>());
    if (limit.unit == RateUnit::kUnknown) {
      return at(rl["unit"], "rate_limit: unit must be second, minute, hour, day, month or year");
    }
    auto rpu = parseRequests(rl["requests_per_unit"]);
    if (!rpu) return rpu.error();
    limit.requests_per_unit = *rpu;
    auto rule = makeRule(rl, limit, path);
    if (!rule) return rule.error();
    limit.rule = rule->name;
    rules_.push_back(std::move(*rule));
    return limit;
  }

  static RateUnit parseUnit(std::string text) {
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    static const std::pair<const char*, RateUnit> kUnits[] = {
        {"second", RateUnit::kSecond}, {"minute", RateUnit::kMinute}, {"hour", RateUnit::kHour},
        {"day", RateUnit::kDay},       {"month", RateUnit::kMonth},   {"year", RateUnit::kYear}};
    for (const auto& [name, unit] : kUnits) {
      if (text == name) return unit;
    }
    return RateUnit::kUnknown;
  }

  static Result<std::uint32_t> parseRequests(const YAML::Node& node) {
    const std::string text = node.as<std::string>();
    std::uint64_t v = 0;
    const bool digits = !text.empty() && text.size() <= 10 &&
                        text.find_first_not_of("0123456789") == std::string::npos;
    if (digits) v = std::stoull(text);
    if (!digits || v > UINT32_MAX) {
      return at(node, "rate_limit: requests_per_unit must be an integer from 0 to 4294967295");
    }
    return static_cast<std::uint32_t>(v);
  }

  Result<Rule> makeRule(const YAML::Node& rl, const DescriptorLimit& limit,
                        const std::string& path) {
    Rule rule;
    // Named by its path, never by rate_limit.name: two domains may use the same name.
    rule.name = uniqueName(sanitize(path));
    rule.shadow = limit.shadow;
    rule.spec.algorithm = Algorithm::kFixedWindow;
    if (rl["algorithm"]) {
      auto a = parseAlgorithm(rl["algorithm"].as<std::string>());
      if (!a) return at(rl["algorithm"], "rate_limit: " + a.error().message);
      rule.spec.algorithm = *a;
    }
    rule.spec.limit = limit.requests_per_unit;
    rule.spec.period = std::chrono::seconds(unitSeconds(limit.unit));
    if (rl["burst"]) {
      auto burst = parseRequests(rl["burst"]);
      if (!burst) return burst.error();
      rule.spec.burst = *burst;
    }
    if (rl["degraded"]) {
      auto p = parseDegradedPolicy(rl["degraded"].as<std::string>());
      if (!p) return at(rl["degraded"], "rate_limit: " + p.error().message);
      rule.degraded = *p;
    }
    if (rl["overload"]) {
      auto p = parseOverloadPolicy(rl["overload"].as<std::string>());
      if (!p) return at(rl["overload"], "rate_limit: " + p.error().message);
      rule.overload = *p;
    }
    if (rl["adaptive"]) {
      auto a = parseAdaptive(rl["adaptive"], "rate_limit");
      if (!a) return at(rl["adaptive"], a.error().message);
      rule.adaptive = *a;
    }
    if (auto made = Limit::make(rule.spec); !made) {
      return at(rl, "rate_limit: " + made.error().message);
    }
    return rule;
  }

  // Rule names allow [A-Za-z0-9_.:-]; anything else in a key or value becomes '_'.
  static std::string sanitize(std::string name) {
    for (char& c : name) {
      if (!isRuleNameChar(c)) c = '_';
    }
    if (name.size() > kMaxRuleNameBytes - 8) name.resize(kMaxRuleNameBytes - 8);
    return name;
  }

  std::string uniqueName(const std::string& base) {
    std::string name = base;
    for (int n = 2; used_.contains(name); ++n) name = base + ":" + std::to_string(n);
    used_.insert(name);
    return name;
  }

  std::vector<Rule>& rules_;
  std::set<std::string> used_;
};

Result<std::shared_ptr<const Domain>> parseDomain(const YAML::Node& root,
                                                  std::vector<Rule>& rules) {
  DomainParser parser(rules);
  return parser.parse(root);
}

}  // namespace throttlex

#include "daemon/service/rules.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include <yaml-cpp/yaml.h>

#include "daemon/service/descriptors.h"
#include "daemon/service/rule_yaml.h"
#include "daemon/service/rules_doc.h"
#include "limiter/lease.h"
#include "limiter/period.h"

namespace throttlex {
namespace {

Result<std::uint64_t> parseCount(const YAML::Node& node, const std::string& what) {
  const std::string text = node.as<std::string>();
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
    return invalidArgument(what + " must be a non-negative integer, got '" + text + "'");
  }
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return invalidArgument(what + " is too large: " + text);
  }
  return value;
}

Result<double> parseFraction(const YAML::Node& node, const std::string& what, double scale) {
  std::string text = node.as<std::string>();
  double divisor = scale;
  if (!text.empty() && text.back() == '%') {
    text.pop_back();
    divisor = 100;
  }
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
      !std::isfinite(value)) {
    return invalidArgument(what + " must be a number, got '" + node.as<std::string>() + "'");
  }
  return value / divisor;
}

}  // namespace

Result<AdaptiveSpec> parseAdaptive(const YAML::Node& node, const std::string& named) {
  const std::string where = named + ": adaptive";
  if (!node.IsMap()) return invalidArgument(where + ": expected a mapping");
  static const std::set<std::string> kKnown = {
      "min", "max",      "latency_target", "percentile", "error_rate_max",
      "law", "interval", "backoff",        "increase",   "min_reports"};
  for (const auto& kv : node) {
    const auto field = kv.first.as<std::string>();
    if (!kKnown.contains(field)) return invalidArgument(where + ": unknown field '" + field + "'");
  }
  if (!node["max"]) return invalidArgument(where + ": missing 'max'");
  AdaptiveSpec a;
  for (auto [field, out] :
       {std::pair{"min", &a.min}, std::pair{"max", &a.max}, std::pair{"increase", &a.increase},
        std::pair{"min_reports", &a.min_reports}}) {
    if (!node[field]) continue;
    auto v = parseCount(node[field], where + "." + field);
    if (!v) return v.error();
    *out = *v;
  }
  for (auto [field, out] :
       {std::pair{"latency_target", &a.latency_target}, std::pair{"interval", &a.interval}}) {
    if (!node[field]) continue;
    auto d = parsePeriod(node[field].as<std::string>());
    if (!d) return invalidArgument(where + "." + field + ": " + d.error().message);
    *out = *d;
  }
  // percentile: 90 or 99.9 (percent); error_rate_max: 5% or 0.05; backoff: 0.9.
  for (auto [field, out, scale] : {std::tuple{"percentile", &a.percentile, 100.0},
                                   std::tuple{"error_rate_max", &a.error_rate_max, 1.0},
                                   std::tuple{"backoff", &a.backoff, 1.0}}) {
    if (!node[field]) continue;
    auto v = parseFraction(node[field], where + "." + field, scale);
    if (!v) return v.error();
    *out = *v;
  }
  if (node["law"]) {
    auto law = parseControlLaw(node["law"].as<std::string>());
    if (!law) return invalidArgument(where + ": " + law.error().message);
    a.law = *law;
  }
  return a;
}

namespace {

// One rule from its YAML mapping. yaml-cpp reports type errors by exception; they are caught by
// the caller and turned into an error naming the rule.
Result<Rule> parseRule(const YAML::Node& node, std::size_t index) {
  const std::string where = "rule #" + std::to_string(index + 1);
  if (!node.IsMap()) return invalidArgument(where + ": expected a mapping");
  static const std::set<std::string> kKnown = {"name",      "algorithm", "limit",    "period",
                                               "burst",     "shadow",    "degraded", "adaptive",
                                               "lease_ttl", "overload"};
  for (const auto& kv : node) {
    const auto field = kv.first.as<std::string>();
    if (!kKnown.contains(field)) return invalidArgument(where + ": unknown field '" + field + "'");
  }
  for (const char* required : {"name", "limit"}) {
    if (!node[required]) return invalidArgument(where + ": missing '" + required + "'");
  }
  Rule rule;
  rule.name = node["name"].as<std::string>();
  const std::string named = "rule '" + rule.name + "'";
  if (node["algorithm"]) {
    auto a = parseAlgorithm(node["algorithm"].as<std::string>());
    if (!a) return invalidArgument(named + ": " + a.error().message);
    rule.spec.algorithm = *a;
  }
  auto limit = parseCount(node["limit"], named + ": limit");
  if (!limit) return limit.error();
  rule.spec.limit = *limit;
  // A concurrency rule's period is its leases' time to live, and may be named so.
  const bool leases = rule.spec.algorithm == Algorithm::kConcurrency;
  if (node["lease_ttl"] && !leases) {
    return invalidArgument(named + ": 'lease_ttl' applies only to algorithm: concurrency");
  }
  if (node["lease_ttl"] && node["period"]) {
    return invalidArgument(named + ": give 'lease_ttl' or 'period', not both");
  }
  const char* period_field = node["lease_ttl"] ? "lease_ttl" : "period";
  if (!node[period_field]) {
    return invalidArgument(where + ": missing '" + (leases ? "lease_ttl" : "period") + "'");
  }
  auto period = parsePeriod(node[period_field].as<std::string>());
  if (!period) return invalidArgument(named + ": " + period_field + ": " + period.error().message);
  rule.spec.period = *period;
  if (node["burst"]) {
    auto burst = parseCount(node["burst"], named + ": burst");
    if (!burst) return burst.error();
    rule.spec.burst = *burst;
  }
  if (node["shadow"]) rule.shadow = node["shadow"].as<bool>();
  if (node["degraded"]) {
    auto p = parseDegradedPolicy(node["degraded"].as<std::string>());
    if (!p) return invalidArgument(named + ": " + p.error().message);
    rule.degraded = *p;
  }
  if (node["overload"]) {
    auto p = parseOverloadPolicy(node["overload"].as<std::string>());
    if (!p) return invalidArgument(named + ": " + p.error().message);
    rule.overload = *p;
  }
  if (node["adaptive"]) {
    auto a = parseAdaptive(node["adaptive"], named);
    if (!a) return a.error();
    rule.adaptive = *a;
  }
  return rule;
}

}  // namespace

std::string_view nameOf(DegradedPolicy p) {
  switch (p) {
    case DegradedPolicy::kShare:
      return "share";
    case DegradedPolicy::kAllow:
      return "allow";
    case DegradedPolicy::kDeny:
      return "deny";
  }
  return "share";
}

std::string_view nameOf(OverloadPolicy p) {
  return p == OverloadPolicy::kDeny ? "deny" : "allow";
}

Result<OverloadPolicy> parseOverloadPolicy(std::string_view text) {
  for (auto p : {OverloadPolicy::kAllow, OverloadPolicy::kDeny}) {
    if (text == nameOf(p)) return p;
  }
  return invalidArgument("overload policy must be allow or deny, not '" + std::string(text) + "'");
}

Result<DegradedPolicy> parseDegradedPolicy(std::string_view text) {
  for (auto p : {DegradedPolicy::kShare, DegradedPolicy::kAllow, DegradedPolicy::kDeny}) {
    if (text == nameOf(p)) return p;
  }
  return invalidArgument("degraded policy must be share, allow or deny, not '" + std::string(text) +
                         "'");
}

bool isRuleNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.' || c == ':';
}

Status validateRuleName(std::string_view name) {
  if (name.empty() || name.size() > kMaxRuleNameBytes) {
    return invalidArgument("rule name must be 1 to 128 bytes");
  }
  for (char c : name) {
    if (!isRuleNameChar(c)) {
      return invalidArgument("rule name '" + std::string(name) +
                             "' may contain only letters, digits, '_', '-', '.' and ':'");
    }
  }
  return Ok{};
}

Result<RuleSet> RuleSet::assemble(std::vector<Rule> rules, Domains domains) {
  RuleSet set;
  set.domains_ = std::move(domains);
  for (Rule& r : rules) {
    if (auto st = validateRuleName(r.name); !st) return st.error();
    auto limit = Limit::make(r.spec);
    if (!limit) return invalidArgument("rule '" + r.name + "': " + limit.error().message);
    const std::string name = r.name;
    std::shared_ptr<AdaptiveCell> cell;
    if (r.adaptive) {
      Status v = validate(*r.adaptive, r.spec.limit);
      if (v && r.adaptive->max > kMaxLimit) v = invalidArgument("adaptive: max is above 2^40");
      if (v && r.spec.algorithm == Algorithm::kConcurrency && r.adaptive->max > kMaxConcurrency) {
        v = invalidArgument("adaptive: max is above 65535, the most leases a key may hold");
      }
      if (!v) return invalidArgument("rule '" + r.name + "': " + v.error().message);
      cell = std::make_shared<AdaptiveCell>(r.spec.limit);
    }
    if (!set.entries_.emplace(name, Entry{std::move(r), *limit, std::move(cell)}).second) {
      return invalidArgument("rule '" + name + "' is defined twice");
    }
  }
  return set;
}

namespace {

// yaml-cpp recurses once per level of nesting (its own guard stops at 1000 levels with the
// message "bad file"): a rules file needs 4. Bounded before parsing, with the line named. Block
// nesting is bounded by each line's indentation and leading "- ", "? " and ": " (their count bounds
// the depth); flow nesting by the brackets open outside quotes and comments. Conservative: a
// bracket inside a plain scalar counts too.
constexpr std::size_t kMaxIndent = 256;
constexpr int kMaxFlowDepth = 64;

Status checkNesting(std::string_view text) {
  int flow = 0;
  std::size_t line = 1;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t end = std::min(text.find('\n', i), text.size());
    const std::string_view l = text.substr(i, end - i);
    const std::size_t indent = l.find_first_not_of(" \t-?:");
    if ((indent == std::string_view::npos ? l.size() : indent) > kMaxIndent) {
      return invalidArgument("line " + std::to_string(line) + ": nested or indented deeper than " +
                             std::to_string(kMaxIndent) + " columns");
    }
    char quote = 0;
    for (std::size_t j = 0; j < l.size(); ++j) {
      const char c = l[j];
      if (quote != 0) {
        if (c == quote) quote = 0;
        continue;
      }
      if (c == '#' && (j == 0 || l[j - 1] == ' ' || l[j - 1] == '\t')) break;
      if (c == '"' || c == '\'') {
        quote = c;
      } else if (c == '[' || c == '{') {
        if (++flow > kMaxFlowDepth) {
          return invalidArgument("line " + std::to_string(line) + ": brackets nested deeper than " +
                                 std::to_string(kMaxFlowDepth) + " levels");
        }
      } else if ((c == ']' || c == '}') && flow > 0) {
        --flow;
      }
    }
    i = end + 1;
    ++line;
  }
  return Ok{};
}

}  // namespace

namespace {

Status parseRulesList(const YAML::Node& root, std::vector<Rule>& rules) {
  if (!root.IsMap() || !root["rules"]) {
    return invalidArgument("expected a top-level 'rules:' list (or 'domain:', envoy's shape)");
  }
  const YAML::Node list = root["rules"];
  if (list.IsNull()) return Ok{};
  if (!list.IsSequence()) return invalidArgument("'rules' must be a list");
  for (std::size_t i = 0; i < list.size(); ++i) {
    auto rule = parseRule(list[i], i);
    if (!rule) return rule.error();
    rules.push_back(std::move(*rule));
  }
  return Ok{};
}

// One file's text, of either shape, into `rules` and `domains`.
Status parseInto(std::string_view text, std::vector<Rule>& rules, RuleSet::Domains& domains) {
  if (auto nested = checkNesting(text); !nested) return nested.error();
  try {
    const YAML::Node root = YAML::Load(std::string(text));
    if (root.IsNull()) return Ok{};
    if (!root.IsMap() || !root["domain"]) return parseRulesList(root, rules);
    auto domain = parseDomain(root, rules);
    if (!domain) return domain.error();
    const std::string name = (*domain)->name();
    if (!domains.emplace(name, std::move(*domain)).second) {
      return invalidArgument("domain '" + name + "' is defined twice");
    }
  } catch (const YAML::Exception& e) {
    return invalidArgument(std::string("invalid YAML: ") + e.what());
  }
  return Ok{};
}

Result<std::string> readText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Error{ErrorCode::kNotFound, "cannot read rules file '" + path + "'"};
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// One run-time change's rule mapping.
Result<Rule> parseChange(const RulesChange& change) {
  if (auto nested = checkNesting(change.yaml); !nested) return nested.error();
  try {
    const YAML::Node node = YAML::Load(change.yaml);
    auto rule = parseRule(node, 0);
    if (!rule) return rule.error();
    if (rule->name != change.rule) return invalidArgument("names rule '" + rule->name + "'");
    return rule;
  } catch (const YAML::Exception& e) {
    return invalidArgument(std::string("invalid YAML: ") + e.what());
  }
}

RulesDoc firstVersion(std::vector<RulesSource> sources) {
  RulesDoc doc;
  doc.sources = std::move(sources);
  doc.version = {0, doc.contentDigest()};
  return doc;
}

}  // namespace

Result<RuleSet> RuleSet::make(std::vector<Rule> rules) {
  auto set = assemble(std::move(rules), {});
  if (!set) return set.error();
  set->doc_ = std::make_shared<const RulesDoc>(firstVersion({{"", rulesYaml(set->rules())}}));
  return set;
}

Result<RuleSet> RuleSet::parseYaml(std::string_view text) {
  return fromDoc(firstVersion({{"", std::string(text)}}));
}

Result<RulesDoc> RuleSet::readFile(const std::string& path) {
  std::vector<std::string> files;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    for (const auto& f : std::filesystem::directory_iterator(path, ec)) {
      const auto ext = f.path().extension();
      if (f.is_regular_file() && (ext == ".yaml" || ext == ".yml")) files.push_back(f.path());
    }
    if (ec) return Error{ErrorCode::kNotFound, "cannot list rules directory '" + path + "'"};
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  // Sources are named by the file's own name: nodes that load equal files under different
  // paths make the same version.
  std::vector<RulesSource> sources;
  for (const std::string& file : files) {
    auto text = readText(file);
    if (!text) return text.error();
    sources.push_back({std::filesystem::path(file).filename(), std::move(*text)});
  }
  return firstVersion(std::move(sources));
}

Result<RuleSet> RuleSet::loadFile(const std::string& path) {
  auto doc = readFile(path);
  if (!doc) return doc.error();
  auto set = fromDoc(*doc);
  if (set) return set;
  // Errors of a file name it by its path; errors of the set as a whole name `path`.
  const std::string& message = set.error().message;
  const bool directory = std::filesystem::is_directory(path);
  for (const RulesSource& s : doc->sources) {
    if (message.starts_with(s.name + ": ")) {
      return invalidArgument((directory ? path + "/" : std::string()) +
                             (directory ? s.name : path) + message.substr(s.name.size()));
    }
  }
  return invalidArgument(path + ": " + message);
}

Result<RuleSet> RuleSet::fromDoc(const RulesDoc& doc) {
  std::vector<Rule> rules;
  Domains domains;
  for (const RulesSource& source : doc.sources) {
    if (auto st = parseInto(source.text, rules, domains); !st) {
      if (source.name.empty()) return st.error();
      return invalidArgument(source.name + ": " + st.error().message);
    }
  }
  auto set = assemble(std::move(rules), std::move(domains));  // the files' rules, names unique
  if (!set) return set.error();
  if (!doc.changes.empty()) {
    // Each change decides its rule alone: fold them by name, then check the set once (a peer's
    // 10,000 changes cost one pass, not one pass each).
    std::map<std::string, Rule, std::less<>> by_name;
    for (const auto& [name, e] : set->entries_) by_name.emplace(name, e.rule);
    for (const RulesChange& change : doc.changes) {
      if (change.yaml.empty()) {
        by_name.erase(change.rule);
        continue;
      }
      auto rule = parseChange(change);
      if (!rule) {
        return invalidArgument("change of rule '" + change.rule + "': " + rule.error().message);
      }
      by_name.insert_or_assign(change.rule, std::move(*rule));
    }
    std::vector<Rule> all;
    all.reserve(by_name.size());
    for (auto& [name, rule] : by_name) all.push_back(std::move(rule));
    set = assemble(std::move(all), set->domains_);
    if (!set) return invalidArgument("changes: " + set.error().message);
  }
  set->doc_ = std::make_shared<const RulesDoc>(doc);
  return set;
}

const RuleSet::Entry* RuleSet::find(std::string_view name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

const Domain* RuleSet::findDomain(std::string_view name) const {
  const auto it = domains_.find(name);
  return it == domains_.end() ? nullptr : it->second.get();
}

std::vector<Rule> RuleSet::rules() const {
  std::vector<Rule> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(e.rule);
  return out;
}

void RuleSet::stamp(std::uint64_t counter, std::string origin, std::int64_t made_ms) {
  RulesDoc doc = *doc_;
  doc.version.counter = counter;
  doc.origin = std::move(origin);
  doc.made_ms = made_ms;
  doc_ = std::make_shared<const RulesDoc>(std::move(doc));
}

Result<RuleSet> RuleSet::assembledWith(const Rule& rule) const {
  std::vector<Rule> all;
  for (const auto& [name, e] : entries_) {
    if (name != rule.name) all.push_back(e.rule);
  }
  all.push_back(rule);
  return assemble(std::move(all), domains_);
}

Result<RuleSet> RuleSet::with(const Rule& rule) const {
  auto set = assembledWith(rule);
  if (!set) return set.error();
  set->doc_ = std::make_shared<const RulesDoc>(doc_->with({rule.name, ruleYaml(rule)}));
  return set;
}

RuleSet RuleSet::without(std::string_view name) const {
  RuleSet copy = *this;
  if (auto it = copy.entries_.find(name); it != copy.entries_.end()) copy.entries_.erase(it);
  copy.doc_ = std::make_shared<const RulesDoc>(doc_->with({std::string(name), ""}));
  return copy;
}

void RuleSet::adoptCells(const RuleSet& previous, Time now) {
  for (auto& [name, e] : entries_) {
    if (!e.cell) continue;
    const Entry* old = previous.find(name);
    if (old == nullptr || !old->cell || old->cell == e.cell) continue;
    e.cell = old->cell;
    e.cell->clamp(e.rule.adaptive->min, e.rule.adaptive->max, now);
  }
}

}  // namespace throttlex

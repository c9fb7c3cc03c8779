#include "cli/output.h"

#include <algorithm>

#include "cli/args.h"
#include "limiter/lease.h"
#include "limiter/period.h"

namespace throttlex::cli {
namespace {

std::string pair(std::int64_t big, const char* big_unit, std::int64_t small,
                 const char* small_unit) {
  return std::to_string(big) + big_unit + std::to_string(small) + small_unit;
}

}  // namespace

std::int64_t ceilMillis(std::chrono::nanoseconds d) {
  if (d < std::chrono::nanoseconds(0)) return -1;
  return (d.count() + 999'999) / 1'000'000;
}

std::string humanDuration(std::chrono::nanoseconds d) {
  if (d < std::chrono::nanoseconds(0)) return "never";
  const std::int64_t ms = ceilMillis(d);
  if (ms < 1000) return std::to_string(ms) + "ms";
  const std::int64_t tenths = (ms + 99) / 100;
  if (tenths < 600) return std::to_string(tenths / 10) + "." + std::to_string(tenths % 10) + "s";
  const std::int64_t s = (ms + 999) / 1000;
  if (s < 3600) return pair(s / 60, "m", s % 60, "s");
  if (s < 86'400) return pair(s / 3600, "h", s % 3600 / 60, "m");
  return pair(s / 86'400, "d", s % 86'400 / 3600, "h");
}

std::string formatPeriodMs(std::chrono::milliseconds period) {
  return throttlex::formatPeriod(period);
}

nlohmann::json checkJson(const client::CheckResult& r) {
  nlohmann::json j = {{"allowed", r.allowed},
                      {"limit", r.limit},
                      {"remaining", r.remaining},
                      {"reset_after_ms", ceilMillis(r.reset_after)},
                      {"retry_after_ms", ceilMillis(r.retry_after)},
                      {"policy", r.policy},
                      {"shadow", r.shadow}};
  if (r.lease_id != 0) {
    j["lease"] = {{"id", throttlex::formatLeaseId(r.lease_id)},
                  {"expires_at_ms", r.lease_expiry_ms}};
  }
  if (r.released != client::LeaseRelease::kNone) j["release"] = releaseName(r.released);
  if (r.renewed != client::LeaseRenewal::kNone) j["renew"] = renewalName(r.renewed);
  return j;
}

std::string_view releaseName(client::LeaseRelease r) {
  return throttlex::leaseReleaseName(static_cast<throttlex::LeaseRelease>(r));
}

std::string_view renewalName(client::LeaseRenewal r) {
  return throttlex::leaseRenewalName(static_cast<throttlex::LeaseRenewal>(r));
}

nlohmann::json ruleJson(const client::Rule& rule) {
  nlohmann::json j = {{"name", rule.name},
                      {"algorithm", nameOf(rule.algorithm)},
                      {"limit", rule.limit},
                      {"period", formatPeriodMs(rule.period)},
                      {"period_ms", rule.period.count()},
                      {"burst", rule.burst},
                      {"shadow", rule.shadow},
                      {"degraded", nameOf(rule.degraded)},
                      {"overload", nameOf(rule.overload)}};
  if (!rule.adaptive) return j;
  const client::AdaptiveInfo& a = *rule.adaptive;
  nlohmann::json history = nlohmann::json::array();
  for (const auto& c : a.history) {
    history.push_back({{"at_unix_ms", c.at_unix_ms}, {"limit", c.limit}, {"reason", c.reason}});
  }
  j["adaptive"] = {{"min", a.min},
                   {"max", a.max},
                   {"latency_target_ms", a.latency_target.count()},
                   {"percentile", a.percentile},
                   {"error_rate_max", a.error_rate_max},
                   {"law", a.law},
                   {"interval_ms", a.interval.count()},
                   {"effective_limit", a.limit},
                   {"reason", a.reason},
                   {"signal_reports", a.reports},
                   {"signal_latency_ms",
                    a.latency ? nlohmann::json(static_cast<double>(a.latency->count()) / 1e6)
                              : nlohmann::json()},
                   {"signal_error_rate", a.error_rate},
                   {"controlled_here", a.controlled_here},
                   {"history", std::move(history)}};
  return j;
}

nlohmann::json persistenceJson(const client::PersistenceInfo& p) {
  return {{"redis", p.redis},
          {"connected", p.connected},
          {"pending", p.pending},
          {"lag_ms", p.lag.count()},
          {"written", p.written},
          {"write_errors", p.write_errors},
          {"slots_waiting", p.slots_waiting},
          {"parked", p.parked},
          {"handoffs_sent", p.handoffs_sent},
          {"handoffs_received", p.handoffs_received},
          {"handoff_entries_sent", p.handoff_entries_sent},
          {"handoff_entries_received", p.handoff_entries_received},
          {"handoff_failures", p.handoff_failures},
          {"recovery_timeouts", p.recovery_timeouts},
          {"draining", p.draining},
          {"drained", p.drained}};
}

nlohmann::json nodeInfoJson(const client::NodeInfo& info) {
  return {{"node_id", info.node_id},
          {"version", info.version},
          {"protocol_version", info.protocol_version},
          {"http_address", info.http_address},
          {"rpc_address", info.rpc_address},
          {"metrics_address", info.metrics_address},
          {"uptime_ms", info.uptime.count()},
          {"keys", info.keys},
          {"evictions", info.evictions},
          {"rules", info.rules},
          {"rules_version", client::formatRulesVersion(info.rules_version)},
          {"rules_origin", info.rules_origin},
          {"rules_made_unix_ms", info.rules_made_unix_ms},
          {"persistence", persistenceJson(info.persistence)}};
}

nlohmann::json memberJson(const client::Member& m) {
  return {{"node_id", m.node_id},
          {"state", m.state},
          {"rpc_address", m.rpc_address},
          {"http_address", m.http_address},
          {"gossip_address", m.gossip_address},
          {"incarnation", m.incarnation}};
}

nlohmann::json inspectionJson(const std::string& key, const client::KeyInspection& ins) {
  nlohmann::json doc = {{"key", key}, {"found", ins.found}};
  if (!ins.found) return doc;
  doc["algorithm"] = ins.algorithm ? nlohmann::json(nameOf(*ins.algorithm)) : nlohmann::json();
  doc["limit"] = ins.limit;
  doc["remaining"] = ins.remaining;
  doc["reset_after_ms"] = ceilMillis(ins.reset_after);
  doc["expiry_unix_ms"] = ins.expiry_unix_ms;
  doc["count"] = ins.count;
  doc["previous_count"] = ins.previous_count;
  return doc;
}

void printJson(std::ostream& out, const nlohmann::json& doc) {
  out << doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
}

void printFields(std::ostream& out, const Fields& fields) {
  std::size_t width = 0;
  for (const auto& [name, value] : fields) width = std::max(width, name.size());
  for (const auto& [name, value] : fields) {
    out << name << std::string(width - name.size() + 2, ' ') << value << '\n';
  }
}

void printTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths(header.size(), 0);
  const auto widen = [&](const std::vector<std::string>& row) {
    for (std::size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  };
  widen(header);
  for (const auto& row : rows) widen(row);
  const auto print = [&](const std::vector<std::string>& row) {
    std::string line;
    for (std::size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    out << line << '\n';
  };
  print(header);
  for (const auto& row : rows) print(row);
}

}  // namespace throttlex::cli

#include "cli/commands.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include "cli/exit_codes.h"
#include "cli/output.h"
#include "gossip/ring.h"
#include "limiter/key.h"
#include "limiter/lease.h"

namespace throttlex::cli {
namespace {

bool json(const Config& config) {
  return config.output == OutputFormat::kJson;
}
std::string yesNo(bool b) {
  return b ? "yes" : "no";
}

std::string decisionText(const client::CheckResult& r) {
  if (!r.shadow || r.decided_allowed == r.allowed) return r.allowed ? "allowed" : "limited";
  // Shadow rules always allow; say what the limiter would have done.
  return "allowed (shadow rule; would be limited)";
}

std::string utcTime(std::int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  char buf[32];
  if (gmtime_r(&t, &tm) == nullptr || std::strftime(buf, sizeof buf, "%FT%TZ", &tm) == 0) {
    return std::to_string(unix_ms) + " ms";
  }
  return buf;
}

}  // namespace

int reportError(const client::Error& error) {
  std::cerr << "throttlectl: " << error.message << " (" << client::errorCodeName(error.code)
            << ")\n";
  return exitCodeFor(error.code);
}

int runCheck(client::Client& c, const Config& config, const client::CheckSpec& spec) {
  const client::CheckResult r = c.check(spec);
  if (!r.ok()) return reportError(r.error);
  if (json(config)) {
    printJson(std::cout, checkJson(r));
  } else {
    std::vector<std::pair<std::string, std::string>> fields = {
        {"decision", decisionText(r)},
        {"remaining", std::to_string(r.remaining) + " of " + std::to_string(r.limit)},
        {"reset in", humanDuration(r.reset_after)},
        {"retry in", r.decided_allowed ? "-" : humanDuration(r.retry_after)},
        {"policy", r.policy}};
    if (r.lease_id != 0) {
      fields.emplace_back("lease", throttlex::formatLeaseId(r.lease_id));
      fields.emplace_back("lease expires", utcTime(r.lease_expiry_ms));
    }
    if (r.released != client::LeaseRelease::kNone) {
      fields.emplace_back("release", std::string(releaseName(r.released)));
    }
    if (r.renewed != client::LeaseRenewal::kNone) {
      fields.emplace_back("renew", std::string(renewalName(r.renewed)));
    }
    printFields(std::cout, fields);
  }
  return r.allowed ? kExitOk : kExitLimited;
}

int runAtomic(client::Client& c, const Config& config,
              const std::vector<client::CheckSpec>& specs) {
  const auto r = c.checkAtomic(specs);
  if (!r) return reportError(r.error());
  // A check that failed (an unknown rule, a bad key) denied the batch: that is the answer.
  if (r->denied_by && !r->results[*r->denied_by].ok()) {
    return reportError(r->results[*r->denied_by].error);
  }
  if (json(config)) {
    nlohmann::json results = nlohmann::json::array();
    for (std::size_t i = 0; i < r->results.size(); ++i) {
      nlohmann::json j = checkJson(r->results[i]);
      j["rule"] = specs[i].rule;
      j["key"] = specs[i].key;
      j["refunded"] = r->results[i].refunded;
      results.push_back(std::move(j));
    }
    printJson(std::cout, {{"allowed", r->allowed},
                          {"denied_by", r->denied_by ? nlohmann::json(*r->denied_by) : nullptr},
                          {"results", std::move(results)}});
  } else {
    std::vector<std::vector<std::string>> rows;
    for (std::size_t i = 0; i < r->results.size(); ++i) {
      const client::CheckResult& x = r->results[i];
      rows.push_back({specs[i].rule, specs[i].key,
                      x.refunded ? "allowed, given back" : decisionText(x),
                      std::to_string(x.remaining) + " of " + std::to_string(x.limit)});
    }
    printTable(std::cout, {"RULE", "KEY", "DECISION", "REMAINING"}, rows);
    if (r->denied_by) {
      std::cout << "denied by check " << *r->denied_by + 1 << " (" << specs[*r->denied_by].rule
                << "=" << specs[*r->denied_by].key << "): nothing spent\n";
    }
  }
  return r->allowed ? kExitOk : kExitLimited;
}

int runInspect(client::Client& c, const Config& config, const client::CheckSpec& spec) {
  const auto ins = c.inspect(spec);
  if (!ins) return reportError(ins.error());
  if (json(config)) {
    printJson(std::cout, inspectionJson(spec.key, *ins));
    return kExitOk;
  }
  if (!ins->found) {
    std::cout << "no state for key '" << spec.key << "' (it is at its full limit)\n";
    return kExitOk;
  }
  printFields(std::cout,
              {{"found", "yes"},
               {"algorithm", ins->algorithm ? std::string(nameOf(*ins->algorithm)) : "-"},
               {"remaining", std::to_string(ins->remaining) + " of " + std::to_string(ins->limit)},
               {"reset in", humanDuration(ins->reset_after)},
               {"expires", utcTime(ins->expiry_unix_ms)},
               {"count", std::to_string(ins->count)},
               {"previous count", std::to_string(ins->previous_count)}});
  return kExitOk;
}

int runReset(client::Client& c, const Config& config, const client::CheckSpec& spec) {
  const auto existed = c.reset(spec);
  if (!existed) return reportError(existed.error());
  if (json(config)) {
    printJson(std::cout, {{"key", spec.key}, {"existed", *existed}});
  } else if (*existed) {
    std::cout << "reset key '" << spec.key << "'\n";
  } else {
    std::cout << "no state for key '" << spec.key << "' (nothing to reset)\n";
  }
  return kExitOk;
}

int runRulesList(client::Client& c, const Config& config) {
  const auto rules = c.listRules();
  if (!rules) return reportError(rules.error());
  if (json(config)) {
    nlohmann::json doc = nlohmann::json::array();
    for (const client::Rule& rule : *rules) doc.push_back(ruleJson(rule));
    printJson(std::cout, doc);
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const client::Rule& rule : *rules) {
    rows.push_back({rule.name, std::string(nameOf(rule.algorithm)), std::to_string(rule.limit),
                    formatPeriodMs(rule.period), rule.burst == 0 ? "-" : std::to_string(rule.burst),
                    yesNo(rule.shadow),
                    rule.adaptive ? std::to_string(rule.adaptive->limit) : "-"});
  }
  printTable(std::cout, {"NAME", "ALGORITHM", "LIMIT", "PERIOD", "BURST", "SHADOW", "ADAPTIVE"},
             rows);
  return kExitOk;
}

namespace {

std::string percentNumber(double fraction) {
  std::ostringstream s;
  s << fraction * 100;
  return s.str();
}

void printAdaptive(const client::AdaptiveInfo& a) {
  Fields f = {{"effective limit", std::to_string(a.limit)},
              {"bounds", std::to_string(a.min) + " .. " + std::to_string(a.max)},
              {"law", a.law + ", every " + formatPeriodMs(a.interval)}};
  if (a.latency_target.count() > 0) {
    f.emplace_back("latency target",
                   formatPeriodMs(a.latency_target) + " at p" + percentNumber(a.percentile));
  }
  if (a.error_rate_max > 0) f.emplace_back("error rate max", percentNumber(a.error_rate_max) + "%");
  f.emplace_back("last step", a.reason);
  f.emplace_back("signals", std::to_string(a.reports) + " reports, latency " +
                                (a.latency ? humanDuration(*a.latency) : "-") + ", errors " +
                                percentNumber(a.error_rate) + "%");
  f.emplace_back("controller", a.controlled_here ? "this node" : "another node");
  printFields(std::cout, f);
  if (a.history.empty()) return;
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : a.history) {
    const std::time_t t = static_cast<std::time_t>(c.at_unix_ms / 1000);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char when[32];
    std::strftime(when, sizeof when, "%H:%M:%S", &tm);
    rows.push_back({when, std::to_string(c.limit), c.reason});
  }
  std::cout << "\n";
  printTable(std::cout, {"AT (UTC)", "LIMIT", "WHY"}, rows);
}

}  // namespace

int runRulesShow(client::Client& c, const Config& config, const std::string& name) {
  const auto rules = c.listRules();
  if (!rules) return reportError(rules.error());
  const auto it = std::find_if(rules->begin(), rules->end(),
                               [&](const client::Rule& r) { return r.name == name; });
  if (it == rules->end()) {
    return reportError({client::ErrorCode::kNotFound, "unknown rule '" + name + "'"});
  }
  if (json(config)) {
    printJson(std::cout, ruleJson(*it));
    return kExitOk;
  }
  printFields(std::cout,
              {{"name", it->name},
               {"algorithm", std::string(nameOf(it->algorithm))},
               {"limit", std::to_string(it->limit) + " per " + formatPeriodMs(it->period)},
               {"burst", it->burst == 0 ? "-" : std::to_string(it->burst)},
               {"shadow", yesNo(it->shadow)},
               {"degraded", std::string(nameOf(it->degraded))},
               {"overload", std::string(nameOf(it->overload))}});
  if (it->adaptive) {
    std::cout << "\n";
    printAdaptive(*it->adaptive);
  }
  return kExitOk;
}

int runReport(client::Client& c, const Config& config, const client::Report& report, int count) {
  const auto taken = c.report(std::vector<client::Report>(static_cast<std::size_t>(count), report));
  if (!taken) return reportError(taken.error());
  if (json(config)) {
    printJson(std::cout, {{"taken", *taken}});
  } else {
    std::cout << "taken: " << *taken << "\n";
  }
  return kExitOk;
}

client::ClientOptions clientOptions(const Config& config, std::vector<std::string> nodes) {
  client::ClientOptions options;
  options.nodes = std::move(nodes);
  options.deadline = config.timeout;
  options.admin_deadline = config.timeout;
  // A CLI waits for a slow link rather than failing at the library's 100 ms default.
  options.connect_timeout = std::min(config.timeout, std::chrono::milliseconds(1000));
  options.on_unavailable = client::OnUnavailable::kReturnError;  // never fail open silently
  options.tls_ca = config.tls_ca;
  options.tls_cert = config.tls_cert;
  options.tls_key = config.tls_key;
  return options;
}

namespace {

// What one member answered to a rules change.
struct MemberOutcome {
  std::string node_id;
  std::string rpc_address;
  std::optional<client::Error> error;  // none: done
  std::string detail;                  // e.g. "deleted", "3 rules"
  std::uint64_t value = 0;             // what the command counts: rules reloaded, 1 if deleted
  client::RulesVersion made;           // a rules change: the version it made
};

// A per-node change (snapshot, keyring) applied on every member that owns slots (alive or
// suspect), each through its own connection. Not in a cluster: on the connected node only.
std::vector<MemberOutcome> onEveryMember(
    client::Client& c, const Config& config,
    const std::function<MemberOutcome(client::Client&)>& change) {
  const auto info = c.nodeInfo();
  std::vector<MemberOutcome> out;
  if (!info || info->members.empty()) {
    out.push_back(change(c));
    if (info) out.back().node_id = info->node_id;
    return out;
  }
  for (const client::Member& m : info->members) {
    if (m.state != "alive" && m.state != "suspect") continue;
    MemberOutcome o;
    if (m.node_id == info->node_id) {
      o = change(c);
    } else {
      auto options = clientOptions(config, {m.rpc_address});
      options.route_to_owner = false;
      auto member = client::Client::connect(options);
      o = member ? change(**member) : MemberOutcome{{}, {}, member.error(), {}, 0, {}};
    }
    o.node_id = m.node_id;
    o.rpc_address = m.rpc_address;
    out.push_back(std::move(o));
  }
  return out;
}

// How long a rules change may take to reach every member before the command reports one
// that has not taken it.
constexpr std::chrono::seconds kConvergeTimeout{5};

// Asks the member at `m` which rules version it runs until it runs `made` or a newer one.
MemberOutcome awaitVersion(const Config& config, const client::Member& m,
                           const client::RulesVersion& made) {
  MemberOutcome o;
  o.node_id = m.node_id;
  o.rpc_address = m.rpc_address;
  auto options = clientOptions(config, {m.rpc_address});
  options.route_to_owner = false;
  auto member = client::Client::connect(options);
  if (!member) {
    o.error = member.error();
    return o;
  }
  const auto deadline = config.clock->monotonic() + kConvergeTimeout;
  for (;;) {
    const auto info = (*member)->nodeInfo();
    if (info && info->rules_version >= made) {
      const client::RulesVersion& runs = info->rules_version;
      if (runs.counter == made.counter && runs != made) {
        // Another change made at the same time on another node took the same counter and won.
        o.error = client::Error{client::ErrorCode::kInternal,
                                "runs version " + client::formatRulesVersion(runs) +
                                    ", a change made at the same time elsewhere: this one (" +
                                    client::formatRulesVersion(made) + ") was lost; make it again"};
        return o;
      }
      o.detail = "runs version " + client::formatRulesVersion(runs);
      return o;
    }
    if (config.clock->monotonic() >= deadline) {
      o.error = info ? client::Error{client::ErrorCode::kDeadlineExceeded,
                                     "still runs rules version " +
                                         client::formatRulesVersion(info->rules_version) +
                                         " after " + std::to_string(kConvergeTimeout.count()) +
                                         " s (made: " + client::formatRulesVersion(made) + ")"}
                     : info.error();
      return o;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// Rules are the cluster's (docs/api.md, "Rules across the cluster"): a change is made on the
// node called, as a new rules version that the node sends to every member (`change` sets
// `made`). Then every other member (alive or suspect) is asked until it runs that version or a
// newer one; one that runs another version of the same counter means a change made at the same
// time elsewhere won, and this one is reported lost. The first outcome is the node called; not
// in a cluster, it is the only one.
std::vector<MemberOutcome> changeOnCluster(
    client::Client& c, const Config& config,
    const std::function<MemberOutcome(client::Client&)>& change) {
  MemberOutcome made = change(c);
  if (made.error) return {made};
  const auto info = c.nodeInfo();
  if (!info) {
    made.error = info.error();  // made, but whom it must reach is unknown
    return {made};
  }
  made.node_id = info->node_id;
  made.rpc_address = info->rpc_address;
  made.detail += ", version " + client::formatRulesVersion(made.made);
  std::vector<MemberOutcome> out{made};
  for (const client::Member& m : info->members) {
    if (m.node_id == info->node_id || (m.state != "alive" && m.state != "suspect")) continue;
    out.push_back(awaitVersion(config, m, made.made));
  }
  return out;
}

// One line (or JSON object) per member; exit 0 when every member applied the change, else the
// exit code of the first failure.
int reportMembers(const Config& config, const std::vector<MemberOutcome>& outcomes,
                  nlohmann::json extra) {
  int code = kExitOk;
  nlohmann::json nodes = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  for (const MemberOutcome& o : outcomes) {
    if (o.error && code == kExitOk) code = exitCodeFor(o.error->code);
    nodes.push_back({{"node_id", o.node_id},
                     {"rpc_address", o.rpc_address},
                     {"ok", !o.error},
                     {"detail", o.error ? o.error->message : o.detail}});
    rows.push_back({o.node_id.empty() ? "-" : o.node_id, o.error ? "FAILED" : "ok",
                    o.error ? o.error->message : o.detail});
    if (o.error) {
      std::cerr << "throttlectl: " << o.node_id << ": " << o.error->message << " ("
                << client::errorCodeName(o.error->code) << ")\n";
    }
  }
  if (json(config)) {
    extra["nodes"] = std::move(nodes);
    printJson(std::cout, extra);
  } else {
    printTable(std::cout, {"NODE", "RESULT", "DETAIL"}, rows);
  }
  return code;
}

}  // namespace

int runRulesSet(client::Client& c, const Config& config, const client::Rule& rule) {
  const auto outcomes = changeOnCluster(c, config, [&](client::Client& node) {
    const auto set = node.setRule(rule);
    MemberOutcome o;
    if (!set) o.error = set.error();
    if (set) o.made = set->version;
    o.detail = "set: " + std::to_string(rule.limit) + "/" + formatPeriodMs(rule.period) + " " +
               std::string(nameOf(rule.algorithm)) + (rule.shadow ? " (shadow)" : "");
    return o;
  });
  return reportMembers(config, outcomes, ruleJson(rule));
}

int runRulesDelete(client::Client& c, const Config& config, const std::string& name) {
  const auto outcomes = changeOnCluster(c, config, [&](client::Client& node) {
    const auto deleted = node.deleteRule(name);
    MemberOutcome o;
    if (!deleted) {
      o.error = deleted.error();
    } else {
      o.detail = deleted->done ? "deleted" : "not found (nothing deleted)";
      o.value = deleted->done ? 1 : 0;
      o.made = deleted->version;
    }
    return o;
  });
  const bool any = std::any_of(outcomes.begin(), outcomes.end(),
                               [](const MemberOutcome& o) { return o.value != 0; });
  return reportMembers(config, outcomes, {{"name", name}, {"deleted", any}});
}

int runRulesReload(client::Client& c, const Config& config) {
  const auto outcomes = changeOnCluster(c, config, [&](client::Client& node) {
    const auto reload = node.reloadRules();
    MemberOutcome o;
    if (!reload) {
      o.error = reload.error();
    } else {
      o.detail =
          "reloaded: " + std::to_string(reload->count) + (reload->count == 1 ? " rule" : " rules");
      o.value = reload->count;
      o.made = reload->version;
    }
    return o;
  });
  // "rules": what the node asked first (the one --node names) loaded.
  return reportMembers(config, outcomes, {{"rules", outcomes.front().value}});
}

int runStatus(client::Client& c, const Config& config) {
  const auto info = c.nodeInfo();
  if (!info) return reportError(info.error());
  if (json(config)) {
    printJson(std::cout, nodeInfoJson(*info));
    return kExitOk;
  }
  printFields(std::cout, {{"node", info->node_id},
                          {"version", info->version},
                          {"protocol", std::to_string(info->protocol_version)},
                          {"rpc", info->rpc_address},
                          {"http", info->http_address},
                          {"metrics", info->metrics_address},
                          {"uptime", humanDuration(info->uptime)},
                          {"keys", std::to_string(info->keys)},
                          {"evictions", std::to_string(info->evictions)},
                          {"rules", std::to_string(info->rules) + " (version " +
                                        client::formatRulesVersion(info->rules_version) +
                                        (info->rules_origin.empty()
                                             ? ", a rules file as loaded)"
                                             : ", made by " + info->rules_origin + ")")}});
  const client::PersistenceInfo& p = info->persistence;
  const std::string handoffs = std::to_string(p.handoffs_sent) + " sent (" +
                               std::to_string(p.handoff_entries_sent) + " entries), " +
                               std::to_string(p.handoffs_received) + " received (" +
                               std::to_string(p.handoff_entries_received) + " entries), " +
                               std::to_string(p.handoff_failures) + " failed" +
                               (p.drained    ? "; drained"
                                : p.draining ? "; draining"
                                             : "");
  printFields(
      std::cout,
      {{"redis", p.redis.empty() ? "none (memory only)"
                                 : p.redis + (p.connected ? " (connected)" : " (NOT connected)")},
       {"snapshot", std::to_string(p.pending) + " pending, lag " + std::to_string(p.lag.count()) +
                        "ms, " + std::to_string(p.written) + " written, " +
                        std::to_string(p.write_errors) + " write errors"},
       {"slots waiting", std::to_string(p.slots_waiting) + " (" + std::to_string(p.parked) +
                             " checks parked, " + std::to_string(p.recovery_timeouts) +
                             " slots opened by deadline)"},
       {"handoffs", handoffs}});
  return kExitOk;
}

int runSnapshot(client::Client& c, const Config& config) {
  const auto outcomes = onEveryMember(c, config, [&](client::Client& node) {
    const auto r = node.snapshot();
    MemberOutcome o;
    if (!r) {
      o.error = r.error();
    } else {
      o.detail = "wrote " + std::to_string(r->written) + " entries, " + std::to_string(r->pending) +
                 " pending";
      o.value = r->written;
    }
    return o;
  });
  std::uint64_t written = 0;
  for (const MemberOutcome& o : outcomes) written += o.value;
  return reportMembers(config, outcomes, {{"written", written}});
}

int runDrain(client::Client& c, const Config& config, const std::string& node) {
  const auto info = c.nodeInfo();
  if (!info) return reportError(info.error());
  std::string address;
  for (const client::Member& m : info->members) {
    if (m.node_id == node || m.rpc_address == node) address = m.rpc_address;
  }
  if (address.empty() && (info->node_id == node || info->rpc_address == node)) {
    address = info->rpc_address;
  }
  if (address.empty()) {
    std::cerr << "throttlectl: no member '" << node << "' (give a node id or RPC address from "
              << "'throttlectl members')\n";
    return kExitRefused;
  }
  auto options = clientOptions(config, {address});
  options.route_to_owner = false;
  auto target = client::Client::connect(options);
  if (!target) return reportError(target.error());
  const client::Status s = (*target)->drain();
  if (!s) return reportError(s.error());
  if (json(config)) {
    printJson(std::cout, {{"node", node}, {"rpc_address", address}, {"draining", true}});
  } else {
    std::cout << node << " (" << address << "): draining: handing its slots over, then leaving\n";
  }
  return kExitOk;
}

namespace {

// The ring every node derives from the same alive members (gossip/ring.h).
// The members that own slots: alive and suspect ones (docs/architecture.md, "Ownership").
Ring aliveRing(const client::NodeInfo& info) {
  std::vector<std::string> alive;
  for (const auto& m : info.members) {
    if (m.state == "alive" || m.state == "suspect") alive.push_back(m.node_id);
  }
  if (alive.empty()) alive.push_back(info.node_id);  // not in a cluster: the node owns everything
  return Ring(std::move(alive));
}

}  // namespace

int runRing(client::Client& c, const Config& config) {
  const auto info = c.nodeInfo();
  if (!info) return reportError(info.error());
  const Ring ring = aliveRing(*info);
  if (json(config)) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& id : ring.members()) {
      list.push_back({{"node_id", id}, {"slots", ring.slotsOwnedBy(id).size()}});
    }
    printJson(std::cout, {{"slot_count", kSlotCount}, {"members", list}});
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& id : ring.members()) {
    const std::size_t slots = ring.slotsOwnedBy(id).size();
    char share[16];
    std::snprintf(share, sizeof share, "%.1f%%", 100.0 * static_cast<double>(slots) / kSlotCount);
    rows.push_back({id, std::to_string(slots), share});
  }
  printTable(std::cout, {"NODE", "SLOTS", "SHARE"}, rows);
  return kExitOk;
}

int runOwner(client::Client& c, const Config& config, const client::CheckSpec& spec) {
  const auto info = c.nodeInfo();
  if (!info) return reportError(info.error());
  // A slot depends on the rule's name and the key only (limiter/key.h): no need to ask for the
  // rule.
  const std::uint32_t slot = slotOf(spec.rule, spec.key);
  const Ring ring = aliveRing(*info);
  const std::string& owner = ring.ownerOf(slot);
  std::string rpc = info->rpc_address;
  for (const auto& m : info->members) {
    if (m.node_id == owner) rpc = m.rpc_address;
  }
  if (json(config)) {
    printJson(std::cout,
              {{"key", spec.key}, {"slot", slot}, {"owner", owner}, {"rpc_address", rpc}});
  } else {
    printFields(
        std::cout,
        {{"key", spec.key}, {"slot", std::to_string(slot)}, {"owner", owner}, {"rpc", rpc}});
  }
  return kExitOk;
}

int runMembers(client::Client& c, const Config& config) {
  const auto info = c.nodeInfo();
  if (!info) return reportError(info.error());
  std::vector<client::Member> members = info->members;
  if (members.empty()) {  // not in a cluster: the node alone
    members.push_back({info->node_id, "alive", "", info->rpc_address, info->http_address, 0});
  }
  if (json(config)) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& m : members) list.push_back(memberJson(m));
    printJson(std::cout, list);
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : members) {
    rows.push_back({m.node_id, m.state, m.rpc_address, m.http_address,
                    m.gossip_address.empty() ? "-" : m.gossip_address,
                    std::to_string(m.incarnation)});
  }
  printTable(std::cout, {"NODE", "STATE", "RPC", "HTTP", "GOSSIP", "INCARNATION"}, rows);
  return kExitOk;
}

int runKeyring(client::Client& c, const Config& config, client::KeyringOp op,
               const std::string& key) {
  const auto outcomes = onEveryMember(c, config, [&](client::Client& node) {
    const auto keys = node.keyring(op, key);
    MemberOutcome o;
    if (!keys) {
      o.error = keys.error();
      return o;
    }
    for (const client::KeyringKey& k : *keys) {
      o.detail += (o.detail.empty() ? "" : " ") + k.id + (k.primary ? " (primary)" : "");
    }
    o.value = keys->size();
    return o;
  });
  const char* op_name = op == client::KeyringOp::kInstall  ? "install"
                        : op == client::KeyringOp::kUse    ? "use"
                        : op == client::KeyringOp::kRemove ? "remove"
                                                           : "list";
  return reportMembers(config, outcomes, {{"op", op_name}});
}

}  // namespace throttlex::cli

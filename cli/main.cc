// throttlectl: checks keys and administers rules on ThrottleX nodes over RPC. Usage, output and
// exit codes: docs/throttlectl.md.
//
// main() only reads flags and environment into a Config and the subcommand's arguments, connects,
// and hands over to cli/commands.h. Every usage problem is found before connecting.
#include <functional>
#include <iostream>

#include <CLI/CLI.hpp>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "gossip/keyring.h"

namespace throttlex::cli {
namespace {

using Action = std::function<int(client::Client&)>;

// Where CLI11 writes every flag while parsing.
struct CommandLine {
  std::vector<std::string> nodes;
  std::string output = "table";
  std::string timeout = "2s";
  TargetArgs check, inspect, reset, owner;
  RuleArgs rule;
  std::string delete_name;
  std::string drain_node;
  std::string keyring_key;
  std::string show_name;
  ReportArgs report;
  AtomicArgs atomic;
  std::string tls_ca, tls_cert, tls_key;
};

struct Subcommands {
  CLI::App* check = nullptr;
  CLI::App* atomic = nullptr;
  CLI::App* inspect = nullptr;
  CLI::App* reset = nullptr;
  CLI::App* rules_list = nullptr;
  CLI::App* rules_set = nullptr;
  CLI::App* rules_delete = nullptr;
  CLI::App* rules_reload = nullptr;
  CLI::App* rules_show = nullptr;
  CLI::App* report = nullptr;
  CLI::App* status = nullptr;
  CLI::App* members = nullptr;
  CLI::App* ring = nullptr;
  CLI::App* owner = nullptr;
  CLI::App* snapshot = nullptr;
  CLI::App* drain = nullptr;
  CLI::App* keyring_generate = nullptr;
  CLI::App* keyring_list = nullptr;
  CLI::App* keyring_install = nullptr;
  CLI::App* keyring_use = nullptr;
  CLI::App* keyring_remove = nullptr;
};

CLI::Validator periodValidator() {
  return CLI::Validator([](std::string& s) { return periodProblem(s); }, "PERIOD");
}
CLI::Validator algorithmValidator() {
  return CLI::Validator([](std::string& s) { return algorithmProblem(s); }, "ALGORITHM");
}

// KEY plus --rule or an inline limit; --rule excludes the inline flags.
void addTargetOptions(CLI::App& cmd, TargetArgs& t, bool with_hits) {
  cmd.add_option("key", t.key, "The key, 1-1024 bytes")->required();
  auto* rule = cmd.add_option("--rule", t.rule, "A named rule configured on the node");
  auto* limit = cmd.add_option("--limit", t.limit, "Inline limit: units per period")
                    ->check(CLI::NonNegativeNumber);
  auto* period = cmd.add_option("--period", t.period, "Inline limit: 250ms, 1s, 60s, 5m, 1h, 1d")
                     ->check(periodValidator());
  auto* algorithm =
      cmd.add_option("--algorithm", t.algorithm,
                     "token_bucket (default), leaky_bucket, gcra, fixed_window, sliding_window, "
                     "concurrency")
          ->check(algorithmValidator());
  auto* burst = cmd.add_option("--burst", t.burst, "Bucket capacity (default: the limit)")
                    ->check(CLI::NonNegativeNumber);
  limit->needs(period);
  period->needs(limit);
  for (CLI::Option* inline_flag : {limit, period, algorithm, burst}) rule->excludes(inline_flag);
  if (with_hits) {
    cmd.add_option("--hits", t.hits,
                   "Units to spend (default 1; 0 only reads; negative gives units back)");
    auto* release =
        cmd.add_option("--release", t.release,
                       "A concurrency rule: release this lease (its id) instead of acquiring one");
    cmd.add_option("--renew", t.renew,
                   "A concurrency rule: renew this lease (its id), a lease_ttl from now")
        ->excludes(release);
  }
}

// Flags every command takes: where the nodes are, TLS, output and deadline.
void addGlobalOptions(CLI::App& app, CommandLine& cl) {
  app.add_option("--node", cl.nodes,
                 "A node's RPC address HOST:PORT; repeat for failover (env THROTTLEX_NODE, "
                 "comma-separated)")
      ->envname("THROTTLEX_NODE")
      ->delimiter(',')
      ->allow_extra_args(false);  // required by every command that connects (chooseAction)
  app.add_option("--tls-ca", cl.tls_ca, "RPC TLS: the cluster CA certificate (PEM)")
      ->envname("THROTTLEX_TLS_CA");
  app.add_option("--tls-cert", cl.tls_cert,
                 "RPC TLS: this operator's certificate (PEM; admin:NAME to change things)")
      ->envname("THROTTLEX_TLS_CERT");
  app.add_option("--tls-key", cl.tls_key, "RPC TLS: the key of --tls-cert (PEM)")
      ->envname("THROTTLEX_TLS_KEY");
  app.add_option("-o,--output", cl.output, "table (default) or json")
      ->check(CLI::IsMember({"table", "json"}));
  app.add_option("--timeout", cl.timeout, "Deadline of each call (default 2s)")
      ->check(periodValidator());
}

// Adaptive rules (docs/adaptive.md): where a rule's limit stands, and reports from the shell.
CLI::App* addAtomicCommand(CLI::App& app, AtomicArgs& args) {
  CLI::App* atomic = app.add_subcommand(
      "atomic",
      "Spend hits on several keys, all or nothing: exit 0 if every check is allowed, 1 if one "
      "is not (then nothing is spent)");
  atomic->add_option("checks", args.checks, "RULE=KEY, one per check")->required();
  atomic->add_option("--hits", args.hits, "Units each check spends (default 1)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 40));
  return atomic;
}

void addAdaptiveCommands(CLI::App& app, CLI::App& rules, CommandLine& cl, Subcommands& s) {
  s.rules_show = rules.add_subcommand(
      "show", "One rule; for an adaptive rule its effective limit, signals and history");
  s.rules_show->add_option("name", cl.show_name, "Rule name")->required();
  s.report = app.add_subcommand(
      "report", "Report how admitted calls of an adaptive rule went (latency, outcome)");
  s.report->add_option("rule", cl.report.rule, "The adaptive rule")->required();
  s.report->add_option("--latency-ms", cl.report.latency_ms, "The call's latency (0 to 3600000)")
      ->check(CLI::Range(0.0, 3'600'000.0));
  s.report->add_option("--outcome", cl.report.outcome, "ok (default), error, timeout, overloaded")
      ->check(CLI::IsMember({"ok", "error", "timeout", "overloaded"}));
  s.report->add_option("--count", cl.report.count, "Send this many such reports (1 to 1000)")
      ->check(CLI::Range(1, 1000));
}

Subcommands defineCommands(CLI::App& app, CommandLine& cl) {
  addGlobalOptions(app, cl);
  app.require_subcommand(1);
  // Global flags may also follow the subcommand: `throttlectl check k --limit 1 --period 1s -o
  // json`.
  app.fallthrough();

  Subcommands s;
  s.check = app.add_subcommand("check", "Spend hits on KEY: exit 0 if allowed, 1 if limited");
  addTargetOptions(*s.check, cl.check, true);
  s.atomic = addAtomicCommand(app, cl.atomic);
  s.inspect = app.add_subcommand("inspect", "Show KEY's stored state without changing it");
  addTargetOptions(*s.inspect, cl.inspect, false);
  s.reset = app.add_subcommand("reset", "Forget KEY's state (back to its full limit)");
  addTargetOptions(*s.reset, cl.reset, false);

  CLI::App* rules = app.add_subcommand("rules", "List and change the node's named rules");
  rules->require_subcommand(1);
  s.rules_list = rules->add_subcommand("list", "List the rules");
  s.rules_set = rules->add_subcommand("set", "Add or replace a rule (until the next reload)");
  s.rules_set->add_option("name", cl.rule.name, "Rule name: [A-Za-z0-9_.:-], at most 128 bytes")
      ->required();
  s.rules_set->add_option("--limit", cl.rule.limit, "Units per period")
      ->required()
      ->check(CLI::NonNegativeNumber);
  s.rules_set->add_option("--period", cl.rule.period, "250ms, 1s, 60s, 5m, 1h, 1d")
      ->required()
      ->check(periodValidator());
  s.rules_set->add_option("--algorithm", cl.rule.algorithm, "Default token_bucket")
      ->check(algorithmValidator());
  s.rules_set->add_option("--burst", cl.rule.burst, "Bucket capacity (default: the limit)")
      ->check(CLI::NonNegativeNumber);
  s.rules_set->add_flag("--shadow", cl.rule.shadow, "Decide and count, but always allow");
  s.rules_set
      ->add_option("--degraded", cl.rule.degraded,
                   "While a key's owner cannot be reached: share (default), allow or deny")
      ->check(CLI::IsMember({"share", "allow", "deny"}));
  s.rules_set
      ->add_option("--overload", cl.rule.overload,
                   "A shed check's answer: allow (default) or deny (docs/overload.md)")
      ->check(CLI::IsMember({"allow", "deny"}));
  s.rules_delete =
      rules->add_subcommand("delete", "Delete a rule (exit 0 even if it did not exist)");
  s.rules_delete->add_option("name", cl.delete_name, "Rule name")->required();
  s.rules_reload = rules->add_subcommand("reload", "Re-read the node's rules file");
  addAdaptiveCommands(app, *rules, cl, s);

  s.status = app.add_subcommand("status", "Show the node's id, version, addresses and counters");
  s.members = app.add_subcommand("members", "List the cluster's members as the node sees them");
  s.ring = app.add_subcommand("ring", "Slots owned by each alive member (the hash ring)");
  s.owner = app.add_subcommand("owner", "Which alive member owns KEY (for a rule or inline limit)");
  addTargetOptions(*s.owner, cl.owner, false);
  s.snapshot = app.add_subcommand(
      "snapshot", "Write every member's pending state to the snapshot store (Redis) now");
  s.drain = app.add_subcommand(
      "drain", "Make NODE hand its slots to the nodes taking them over, leave and exit");
  s.drain->add_option("node", cl.drain_node, "The member's node id or RPC address")->required();

  CLI::App* keyring = app.add_subcommand(
      "keyring", "The gossip keyring of every member (docs/security.md: rotating keys)");
  keyring->require_subcommand(1);
  s.keyring_generate =
      keyring->add_subcommand("generate", "Print a new random key (base64); connects nowhere");
  s.keyring_list = keyring->add_subcommand("list", "The key ids each member holds");
  s.keyring_install = keyring->add_subcommand("install", "Add KEY to every member's keyring");
  s.keyring_install->add_option("key", cl.keyring_key, "A key from 'keyring generate'")->required();
  s.keyring_use =
      keyring->add_subcommand("use", "Seal with KEY from now on (installed everywhere first)");
  s.keyring_use->add_option("key", cl.keyring_key, "The key, or its id (8 hex digits)")->required();
  s.keyring_remove =
      keyring->add_subcommand("remove", "Remove KEY from every member (not the primary)");
  s.keyring_remove->add_option("key", cl.keyring_key, "The key, or its id (8 hex digits)")
      ->required();
  return s;
}

throttlex::Result<Action> chooseAction(const Subcommands& s, const CommandLine& cl,
                                       const Config& config) {
  const auto target = [&](const TargetArgs& args,
                          int (*run)(client::Client&, const Config&,
                                     const client::CheckSpec&)) -> throttlex::Result<Action> {
    auto spec = makeCheckSpec(args);
    if (!spec) return spec.error();
    return Action([run, &config, spec = *spec](client::Client& c) { return run(c, config, spec); });
  };
  if (s.check->parsed()) return target(cl.check, runCheck);
  if (s.atomic->parsed()) {
    auto specs = makeAtomicSpecs(cl.atomic);
    if (!specs) return specs.error();
    return Action(
        [&config, specs = *specs](client::Client& c) { return runAtomic(c, config, specs); });
  }
  if (s.inspect->parsed()) return target(cl.inspect, runInspect);
  if (s.reset->parsed()) return target(cl.reset, runReset);
  if (s.rules_set->parsed()) {
    auto rule = makeRule(cl.rule);
    if (!rule) return rule.error();
    return Action(
        [&config, rule = *rule](client::Client& c) { return runRulesSet(c, config, rule); });
  }
  if (s.rules_delete->parsed()) {
    return Action([&](client::Client& c) { return runRulesDelete(c, config, cl.delete_name); });
  }
  if (s.rules_list->parsed())
    return Action([&](client::Client& c) { return runRulesList(c, config); });
  if (s.rules_reload->parsed()) {
    return Action([&](client::Client& c) { return runRulesReload(c, config); });
  }
  if (s.rules_show->parsed()) {
    return Action([&](client::Client& c) { return runRulesShow(c, config, cl.show_name); });
  }
  if (s.report->parsed()) {
    const client::Report r = makeReport(cl.report);
    return Action([&config, r, n = cl.report.count](client::Client& c) {
      return runReport(c, config, r, n);
    });
  }
  if (s.snapshot->parsed()) {
    return Action([&](client::Client& c) { return runSnapshot(c, config); });
  }
  if (s.drain->parsed()) {
    return Action([&](client::Client& c) { return runDrain(c, config, cl.drain_node); });
  }
  const auto keyring = [&](client::KeyringOp op) {
    return Action([&, op](client::Client& c) { return runKeyring(c, config, op, cl.keyring_key); });
  };
  if (s.keyring_list->parsed()) return keyring(client::KeyringOp::kList);
  if (s.keyring_install->parsed()) return keyring(client::KeyringOp::kInstall);
  if (s.keyring_use->parsed()) return keyring(client::KeyringOp::kUse);
  if (s.keyring_remove->parsed()) return keyring(client::KeyringOp::kRemove);
  if (s.ring->parsed()) return Action([&](client::Client& c) { return runRing(c, config); });
  if (s.owner->parsed()) return target(cl.owner, runOwner);
  if (s.members->parsed()) {
    return Action([&](client::Client& c) { return runMembers(c, config); });
  }
  return Action([&](client::Client& c) { return runStatus(c, config); });
}

int connectAndRun(const Config& config, const Action& action) {
  auto c = client::Client::connect(clientOptions(config, config.nodes));
  if (!c) {
    if (c.error().code == client::ErrorCode::kInvalidArgument) {  // a malformed --node
      std::cerr << "throttlectl: " << c.error().message << "\n";
      return kExitUsage;
    }
    return reportError(c.error());
  }
  return action(**c);
}

int run(int argc, char** argv) {
  CLI::App app("throttlectl: check keys and manage rules on ThrottleX nodes", "throttlectl");
  app.footer(std::string(kExitCodeHelp));
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "throttlectl: " + std::string(e.what()) + "\nRun with --help for more information.\n";
  });
  CommandLine cl;
  const Subcommands subcommands = defineCommands(app, cl);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports --help as a "parse error" with exit code 0; every real one is a usage error.
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }

  if (subcommands.keyring_generate->parsed()) {
    std::cout << gossip::formatKey(gossip::generateKey()) << "\n";
    return kExitOk;
  }
  if (cl.nodes.empty()) {
    std::cerr << "throttlectl: --node is required (or THROTTLEX_NODE)\nRun with --help for more "
                 "information.\n";
    return kExitUsage;
  }
  static const SystemClock clock;
  Config config;
  config.clock = &clock;
  config.nodes = cl.nodes;
  config.tls_ca = cl.tls_ca;
  config.tls_cert = cl.tls_cert;
  config.tls_key = cl.tls_key;
  config.output = cl.output == "json" ? OutputFormat::kJson : OutputFormat::kTable;
  auto timeout = parseMillis(cl.timeout);
  auto action = chooseAction(subcommands, cl, config);
  if (!timeout || !action) {
    std::cerr << "throttlectl: " << (timeout ? action.error() : timeout.error()).message
              << "\nRun with --help for more information.\n";
    return kExitUsage;
  }
  config.timeout = *timeout;
  return connectAndRun(config, *action);
}

}  // namespace
}  // namespace throttlex::cli

int main(int argc, char** argv) {
  return throttlex::cli::run(argc, argv);
}

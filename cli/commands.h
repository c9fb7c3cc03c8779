// throttlectl's subcommands: each sends one request, prints the answer to stdout (table or JSON)
// and returns the exit code (cli/exit_codes.h). A client error is printed to stderr as
// "throttlectl: <message>" and nothing goes to stdout.
#pragma once

#include <string>
#include <vector>

#include "cli/args.h"
#include "throttlex/client.h"

namespace throttlex::cli {

int runCheck(client::Client& c, const Config& config, const client::CheckSpec& spec);
// All or nothing (docs/api.md, "Atomic batches"): one line per check, and the check that denied;
// exit 0 when every check was allowed, 1 when one was not (the others were given back).
int runAtomic(client::Client& c, const Config& config, const std::vector<client::CheckSpec>& specs);
int runInspect(client::Client& c, const Config& config, const client::CheckSpec& spec);
int runReset(client::Client& c, const Config& config, const client::CheckSpec& spec);
int runRulesList(client::Client& c, const Config& config);
// Rules changes are the cluster's: made on the node called, which sends them to every member;
// one line per member with the version it runs; exit 0 only when every member runs it.
int runRulesSet(client::Client& c, const Config& config, const client::Rule& rule);
// A rule that did not exist is not an error ("not found"): deleting is idempotent, so a script
// can converge on "no such rule" without special cases.
int runRulesDelete(client::Client& c, const Config& config, const std::string& name);
int runRulesReload(client::Client& c, const Config& config);
// One rule; an adaptive rule's effective limit, the signal that moved it last and its history.
// An unknown rule: exit 4.
int runRulesShow(client::Client& c, const Config& config, const std::string& name);
// `count` copies of `report` in one call (to the first node that answers).
int runReport(client::Client& c, const Config& config, const client::Report& report, int count);
int runStatus(client::Client& c, const Config& config);
// Flushes pending snapshot entries on every member; exit 0 only when every member wrote them all.
int runSnapshot(client::Client& c, const Config& config);
// Asks NODE (a member's id or RPC address) to hand its slots over and leave.
int runDrain(client::Client& c, const Config& config, const std::string& node);
// Lists or changes the gossip keyring on every member (one line each: the key ids afterwards,
// the primary marked); exit 0 only when every member applied it. A rotation: install the new key,
// use it, remove the old one (docs/security.md).
int runKeyring(client::Client& c, const Config& config, client::KeyringOp op,
               const std::string& key);
int runMembers(client::Client& c, const Config& config);
int runRing(client::Client& c, const Config& config);
int runOwner(client::Client& c, const Config& config, const client::CheckSpec& spec);

// The client options every throttlectl connection uses.
client::ClientOptions clientOptions(const Config& config, std::vector<std::string> nodes);

// Prints "throttlectl: <message>" to stderr and returns the matching exit code.
int reportError(const client::Error& error);

}  // namespace throttlex::cli

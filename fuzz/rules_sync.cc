// Fuzz target: a peer's rules (syncRules, docs/api.md "Rules across the cluster"). The input is
// read as the parameters of syncRules with the server's bounds and decoded as the server does
// (bounds and digest checked); then the same fields, with their digest made to match, are built
// into rules as a node that adopts them would — twice, to check that the same document always
// gives the same rules. Malformed messages raise a kj::Exception, which the RPC system turns into
// an error answer; a decoder's or builder's error is an answer; anything else is a bug. Every
// rule built is written back as a change (ruleYaml) and must parse to the same rule: a field the
// writer forgot would make the node that made a change run another rule than its peers.
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "daemon/rpc/rpc_server.h"
#include "daemon/rules_sync/wire.h"

using namespace throttlex;

namespace {

void build(proto::RulesDoc::Reader in) {
  if (in.getSources().size() > RulesDoc::kMaxSources ||
      in.getChanges().size() > RulesDoc::kMaxChanges) {
    return;
  }
  RulesDoc doc;
  for (auto s : in.getSources()) doc.sources.push_back({s.getName().cStr(), s.getText().cStr()});
  for (auto c : in.getChanges()) doc.changes.push_back({c.getRule().cStr(), c.getYaml().cStr()});
  doc.version = {in.getVersion().getCounter(), doc.contentDigest()};
  if (!doc.validate()) return;
  auto first = RuleSet::fromDoc(doc);
  auto second = RuleSet::fromDoc(doc);
  if (first.ok() != second.ok()) __builtin_trap();
  if (!first) return;
  const auto a = first->rules();
  const auto b = second->rules();
  if (a.size() != b.size()) __builtin_trap();
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ruleYaml(a[i]) != ruleYaml(b[i])) __builtin_trap();
    auto back = RuleSet::parseYaml("rules:\n  - " + ruleYaml(a[i]) + "\n");
    if (!back || back->size() != 1) __builtin_trap();
    const std::vector<Rule> again = back->rules();
    const Rule& r = again.front();
    const LimitSpec& x = r.spec;
    const LimitSpec& y = a[i].spec;
    if (r.name != a[i].name || x.algorithm != y.algorithm || x.limit != y.limit ||
        x.period != y.period || x.burst != y.burst || r.shadow != a[i].shadow ||
        r.degraded != a[i].degraded || r.overload != a[i].overload || r.adaptive != a[i].adaptive) {
      __builtin_trap();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<capnp::word> words(size / sizeof(capnp::word));
  if (words.empty()) return 0;
  std::memcpy(words.data(), data, words.size() * sizeof(capnp::word));
  try {
    capnp::FlatArrayMessageReader message(
        kj::ArrayPtr<const capnp::word>(words.data(), words.size()),
        RpcServerOptions().readerOptions());
    auto params = message.getRoot<proto::Limiter::SyncRulesParams>();
    if (!params.hasDoc()) return 0;
    (void)decode(params.getDoc());
    build(params.getDoc());
  } catch (const kj::Exception&) {
  }
  return 0;
}

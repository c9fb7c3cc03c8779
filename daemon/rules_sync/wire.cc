#include "daemon/rules_sync/wire.h"

#include "proto/text.h"

namespace throttlex {

using proto::kjText;
using proto::view;

void encode(const RulesVersion& v, proto::RulesVersion::Builder out) {
  out.setCounter(v.counter);
  out.setDigest(v.digest);
}

RulesVersion decode(proto::RulesVersion::Reader in) {
  return {in.getCounter(), in.getDigest()};
}

void encode(const RulesDoc& doc, proto::RulesDoc::Builder out) {
  encode(doc.version, out.initVersion());
  out.setOrigin(kjText(doc.origin));
  out.setMadeMs(doc.made_ms);
  auto sources = out.initSources(static_cast<unsigned>(doc.sources.size()));
  for (unsigned i = 0; i < doc.sources.size(); ++i) {
    sources[i].setName(kjText(doc.sources[i].name));
    sources[i].setText(kjText(doc.sources[i].text));
  }
  auto changes = out.initChanges(static_cast<unsigned>(doc.changes.size()));
  for (unsigned i = 0; i < doc.changes.size(); ++i) {
    changes[i].setRule(kjText(doc.changes[i].rule));
    changes[i].setYaml(kjText(doc.changes[i].yaml));
  }
}

Result<RulesDoc> decode(proto::RulesDoc::Reader in) {
  // Bounds first, before anything is copied.
  if (in.getSources().size() > RulesDoc::kMaxSources ||
      in.getChanges().size() > RulesDoc::kMaxChanges) {
    return invalidArgument("rules: " + std::to_string(in.getSources().size()) + " sources and " +
                           std::to_string(in.getChanges().size()) + " changes, at most " +
                           std::to_string(RulesDoc::kMaxSources) + " and " +
                           std::to_string(RulesDoc::kMaxChanges));
  }
  RulesDoc doc;
  doc.version = decode(in.getVersion());
  doc.origin = std::string(view(in.getOrigin()));
  doc.made_ms = in.getMadeMs();
  for (auto s : in.getSources()) {
    doc.sources.push_back({std::string(view(s.getName())), std::string(view(s.getText()))});
  }
  for (auto c : in.getChanges()) {
    doc.changes.push_back({std::string(view(c.getRule())), std::string(view(c.getYaml()))});
  }
  if (Status valid = doc.validate(); !valid) return valid.error();
  return doc;
}

}  // namespace throttlex

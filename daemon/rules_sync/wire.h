// Rules versions and documents on the wire (proto/throttlex.capnp: syncRules, NodeInfo, the
// answers of setRule, deleteRule and reloadRules). The decoder checks what a peer could get
// wrong: the bounds of RulesDoc and a digest that matches the content (fuzz/rules_doc_wire.cc).
#pragma once

#include "daemon/service/rules_doc.h"
#include "proto/throttlex.capnp.h"

namespace throttlex {

void encode(const RulesVersion& v, proto::RulesVersion::Builder out);
RulesVersion decode(proto::RulesVersion::Reader in);

void encode(const RulesDoc& doc, proto::RulesDoc::Builder out);
Result<RulesDoc> decode(proto::RulesDoc::Reader in);

}  // namespace throttlex

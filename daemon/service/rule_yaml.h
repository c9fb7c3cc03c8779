// The parts of a rule's YAML that both rules-file shapes read (ours, daemon/service/rules.h, and
// envoyproxy/ratelimit's, daemon/service/descriptors.h): one parser, so a field means the same in
// either shape. yaml-cpp reports type errors by exception; callers catch them.
#pragma once

#include <string>

#include <yaml-cpp/yaml.h>

#include "daemon/service/adaptive.h"
#include "limiter/result.h"

namespace throttlex {

// A rule's `adaptive:` mapping (docs/adaptive.md). `named` ("rule 'x'") prefixes the errors.
// Validated against the rule's starting limit with the rule (RuleSet::make).
Result<AdaptiveSpec> parseAdaptive(const YAML::Node& node, const std::string& named);

}  // namespace throttlex

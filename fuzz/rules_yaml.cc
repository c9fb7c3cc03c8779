// Fuzz target: the rules file (daemon/service/rules.h, RuleSet::parseYaml). Any text is either a
// rule set or an error naming what is wrong: never a crash, a hang or unbounded recursion.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "daemon/service/rules.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto rules = throttlex::RuleSet::parseYaml(text);
  if (rules) (void)rules->size();
  return 0;
}

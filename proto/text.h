// Text between std::string and Cap'n Proto without copies where none is needed; shared by the
// node (daemon/routing/wire.h) and the client library.
#pragma once

#include <string>
#include <string_view>

#include <capnp/blob.h>
#include <kj/string.h>

namespace throttlex::proto {

// Views into the message: valid while it is.
inline std::string_view view(capnp::Text::Reader text) {
  return {text.begin(), text.size()};
}
// Views into `s`: valid while it is and unchanged.
inline kj::StringPtr kjText(const std::string& s) {
  return {s.c_str(), s.size()};
}

}  // namespace throttlex::proto

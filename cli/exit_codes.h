// throttlectl's exit codes: part of its interface, scripts branch on them. ONLY APPEND.
#pragma once

#include <string_view>

#include "throttlex/client.h"

namespace throttlex::cli {

enum ExitCode : int {
  kExitOk = 0,           // done; for check: allowed
  kExitLimited = 1,      // check only: the key is over its limit
  kExitUsage = 2,        // bad flags or arguments; nothing was sent
  kExitUnreachable = 3,  // no node answered in time (unavailable, deadline exceeded)
  kExitRefused = 4,      // a node answered with an error (invalid argument, unknown rule, ...)
};

// The footer of `throttlectl --help`; docs/throttlectl.md says the same.
inline constexpr std::string_view kExitCodeHelp =
    "Exit codes:\n"
    "  0  ok (check: allowed)\n"
    "  1  check: limited\n"
    "  2  usage error: bad flags, period, algorithm or --node address; nothing was sent\n"
    "  3  node unreachable: no node answered within --timeout\n"
    "  4  the node refused the request: invalid argument, unknown rule, unsupported protocol\n"
    "     version, permission denied (TLS role), internal error\n"
    "Errors go to stderr as 'throttlectl: <message>'; -o json prints one JSON document to\n"
    "stdout on exit codes 0 and 1 and nothing on the others.";

inline int exitCodeFor(client::ErrorCode code) {
  switch (code) {
    case client::ErrorCode::kNone:
      return kExitOk;
    case client::ErrorCode::kUnavailable:
    case client::ErrorCode::kDeadlineExceeded:
      return kExitUnreachable;
    default:
      return kExitRefused;
  }
}

}  // namespace throttlex::cli

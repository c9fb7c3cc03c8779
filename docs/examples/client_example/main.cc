// A minimal program using the installed ThrottleX client library (see CMakeLists.txt here).
//
//   client_example --nodes 127.0.0.1:7400 --key user:42 --limit 5 --period-ms 10000 --count 8
//
// Exit status: 0 done, 1 bad arguments, 2 no node reachable.
#include <throttlex/client.h>

#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace tc = throttlex::client;

namespace {

void usage(std::ostream& out) {
  out << "usage: client_example [--nodes host:port[,host:port...]] [--key KEY] [--limit N]\n"
         "                      [--period-ms MS] [--count N] [--deadline-ms MS]\n"
         "                      [--connect-timeout-ms MS]\n"
         "Sends --count checks of one unit each for KEY against an inline token bucket limit of\n"
         "N per MS milliseconds and prints each answer. Defaults: --nodes 127.0.0.1:7400\n"
         "--key example --limit 5 --period-ms 10000 --count 8.\n";
}

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> parts;
  std::stringstream in(list);
  for (std::string part; std::getline(in, part, ',');) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

}  // namespace

int main(int argc, char** argv) {
  tc::ClientOptions options;
  options.nodes = {"127.0.0.1:7400"};
  tc::CheckSpec spec;
  spec.key = "example";
  spec.limit = 5;
  spec.period = std::chrono::milliseconds(10'000);
  long count = 8;

  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(std::cout);
      return 0;
    }
    if (i + 1 >= argc) {
      usage(std::cerr);
      return 1;
    }
    const std::string value = argv[++i];
    try {
      if (arg == "--nodes") {
        options.nodes = split(value);
      } else if (arg == "--key") {
        spec.key = value;
      } else if (arg == "--limit") {
        spec.limit = std::stoull(value);
      } else if (arg == "--period-ms") {
        spec.period = std::chrono::milliseconds(std::stoll(value));
      } else if (arg == "--count") {
        count = std::stol(value);
      } else if (arg == "--deadline-ms") {
        options.deadline = std::chrono::milliseconds(std::stoll(value));
      } else if (arg == "--connect-timeout-ms") {
        options.connect_timeout = std::chrono::milliseconds(std::stoll(value));
      } else {
        usage(std::cerr);
        return 1;
      }
    } catch (const std::exception&) {
      std::cerr << "client_example: bad value for " << arg << ": " << value << "\n";
      return 1;
    }
  }

  auto client = tc::Client::connect(options);
  if (!client) {
    std::cerr << "client_example: " << client.error().message << "\n";
    return client.error().code == tc::ErrorCode::kInvalidArgument ? 1 : 2;
  }
  for (long i = 0; i < count; ++i) {
    const tc::CheckResult r = (*client)->check(spec);
    if (!r.ok()) {
      std::cout << "error " << tc::errorCodeName(r.error.code) << ": " << r.error.message << "\n";
      continue;
    }
    std::cout << (r.allowed ? "allowed" : "limited") << " remaining=" << r.remaining
              << " retry_after_ms="
              << std::chrono::duration_cast<std::chrono::milliseconds>(r.retry_after).count()
              << (r.fallback ? " (fallback: no node answered)" : "") << "\n";
  }
  const tc::ClientStats stats = (*client)->stats();
  std::cout << stats.checks << " checks in " << stats.calls << " calls\n";
  return 0;
}

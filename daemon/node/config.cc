#include "daemon/node/config.h"

#include <unistd.h>
#include <iostream>

#include <CLI/CLI.hpp>

#include "daemon/base/node_info.h"

namespace throttlex {
namespace {

std::string hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

std::vector<std::string> splitList(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = text.find(',', start);
    std::string item =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty()) out.push_back(std::move(item));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

struct Options {
  Config c;
  std::string join;
  std::string inline_limits = "on";
};

// Gossip keys and RPC TLS (docs/security.md).
void defineSecurity(CLI::App& app, Config& c) {
  app.add_option("--gossip-keyring", c.gossip_keyring,
                 "Keyring file (one base64 key per line, the first seals): every gossip packet "
                 "and stream is sealed with AES-256-GCM; 'throttlectl keyring' rotates it. "
                 "Without it gossip is unauthenticated (docs/security.md)");
  app.add_option("--gossip-verify-incoming", c.gossip_verify_incoming,
                 "With a keyring: refuse gossip that is not sealed (false only while turning "
                 "keys on in a running cluster)")
      ->capture_default_str();
  app.add_option("--gossip-verify-outgoing", c.gossip_verify_outgoing,
                 "With a keyring: seal outgoing gossip (false only while turning keys on)")
      ->capture_default_str();
  app.add_option("--tls-ca", c.tls_ca,
                 "RPC TLS: the cluster CA certificate (PEM); with --tls-cert and --tls-key every "
                 "RPC connection needs a certificate of this CA whose name gives its role");
  app.add_option("--tls-cert", c.tls_cert,
                 "RPC TLS: this node's certificate (PEM, common name peer:NAME, DNS name "
                 "throttlex-node), presented to clients and to other nodes");
  app.add_option("--tls-key", c.tls_key, "RPC TLS: the private key of --tls-cert (PEM)");
  app.add_option("--tls-incoming-required", c.tls_incoming_required,
                 "With --tls-*: refuse plain RPC connections (false only while turning TLS on in "
                 "a running cluster: plain ones are then served with every right)")
      ->capture_default_str();
  app.add_option("--tls-outgoing", c.tls_outgoing,
                 "With --tls-*: connect to peers over TLS (false only while turning TLS on, until "
                 "every node accepts it)")
      ->capture_default_str();
}

// Where the node listens and how it is reached.
void defineListeners(CLI::App& app, Config& c) {
  app.add_option("--bind", c.bind, "Address all listeners bind")->capture_default_str();
  app.add_option("--advertise", c.advertise,
                 "Address other nodes and clients reach this node at (default: --bind, or the "
                 "hostname when binding all addresses)");
  app.add_option("--http-port", c.http_port, "HTTP API port")->capture_default_str();
  app.add_option("--rpc-port", c.rpc_port, "Cap'n Proto RPC port (clients, throttlectl)")
      ->capture_default_str();
  app.add_option("--gossip-port", c.gossip_port, "Gossip (SWIM) port")->capture_default_str();
  app.add_option("--metrics-port", c.metrics_port, "Prometheus /metrics port")
      ->capture_default_str();
  app.add_option("--rls-port", c.rls_port,
                 "Envoy rate limit service (gRPC, envoy.service.ratelimit.v3) port; -1: off, 0: a "
                 "port the kernel picks")
      ->check(CLI::Range(-1, 65535))
      ->capture_default_str();
  app.add_option("--rls-response-headers", c.rls_response_headers,
                 "Add the RateLimit-Policy and RateLimit headers to every RLS answer "
                 "(response_headers_to_add)")
      ->capture_default_str();
  app.add_option("--max-connections", c.max_connections,
                 "Open connections per API (HTTP, RPC), more are closed at once; 0: half of the "
                 "descriptors left after a reserve, at most 10000")
      ->check(CLI::Range(0, 1'000'000))
      ->capture_default_str();
  app.add_option("--metrics-bind", c.metrics_bind,
                 "Address /metrics binds, e.g. an internal interface (default: --bind)");
}

// How long connections may idle and owners may be silent.
void defineTimeouts(CLI::App& app, Config& c) {
  app.add_option("--rpc-idle-timeout-s", c.rpc_idle_timeout_s,
                 "Close an RPC connection that sent nothing for this long (0: never); peers "
                 "heartbeat while idle and clients reconnect on their next call")
      ->check(CLI::Range(0, 86'400))
      ->capture_default_str();
  app.add_option("--owner-silence-ms,--forward-timeout-ms", c.owner_silence_ms,
                 "T: an owner that answered nothing for less than this is never decided for "
                 "elsewhere (its checks wait); past it, its checks go to the stand-in owner or "
                 "the degraded policy. --forward-timeout-ms is the old name")
      ->check(CLI::Range(300, 60'000))
      ->capture_default_str();
  app.add_option("--overload-target-ms", c.overload_target_ms,
                 "Overload protection (docs/overload.md): a worker loop lagging more than this "
                 "sheds sheddable checks, and a share of normal ones once the lag lasts "
                 "--overload-interval-ms (all of them past 10 targets); 0: never shed")
      ->check(CLI::Range(0, 10'000))
      ->capture_default_str();
  app.add_option("--overload-interval-ms", c.overload_interval_ms,
                 "How long the lag must stay above the target to count as overload")
      ->check(CLI::Range(1, 60'000))
      ->capture_default_str();
}

void define(CLI::App& app, Options& o) {
  Config& c = o.c;
  app.add_option("--config", c.config_file,
                 "Config file: TOML 'key = value' lines using the long option names");
  app.add_option("--node-id", c.node_id,
                 "Unique node id (default: <hostname>:<http-port>, or <hostname>:pid<pid> with "
                 "--http-port 0)");
  defineListeners(app, c);
  app.add_option("--inline-limits", o.inline_limits,
                 "on: callers may send a limit with each check; off: named rules only (for "
                 "untrusted callers; forwarded checks are not affected)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  app.add_option("--join", o.join, "Comma-separated host:port gossip seeds to join");
  app.add_option("--cluster-name", c.cluster_name,
                 "Cluster name: nodes of other clusters on the same network are ignored")
      ->capture_default_str();
  app.add_option("--gossip-preset", c.gossip_preset,
                 "Gossip timing: local (one machine), lan, wan (see docs/gossip.md)")
      ->check(CLI::IsMember({"local", "lan", "wan"}))
      ->capture_default_str();
  app.add_option("--redis", c.redis, "Redis host:port for snapshots (env also: REDIS_HOST)")
      ->check(CLI::Validator(
          [](const std::string& v) -> std::string {
            if (v.empty()) return {};  // memory only
            const auto colon = v.rfind(':');
            if (colon == std::string::npos || colon == 0)
              return "expected host:port, got '" + v + "'";
            const std::string port = v.substr(colon + 1);
            if (port.empty() || port.size() > 5 ||
                port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) < 1 ||
                std::stoi(port) > 65535) {
              return "port must be 1 to 65535 in '" + v + "'";
            }
            return {};
          },
          "HOST:PORT"));
  app.add_option("--redis-password-file", c.redis_password_file,
                 "File holding the Redis password (AUTH on every connection; a file, so the "
                 "password does not show in ps)");
  app.add_option("--redis-user", c.redis_user,
                 "Redis ACL user for AUTH (default: the default user, as with requirepass)");
  app.add_option("--snapshot-interval-ms", c.snapshot_interval_ms,
                 "Interval between snapshot writes to Redis (the crash-recovery bound)")
      ->check(CLI::Range(10, 60'000))
      ->capture_default_str();
  app.add_option("--recovery", c.recovery,
                 "Start-up reads from Redis: eager (every slot before the node is ready) or lazy "
                 "(a slot when its first check arrives)")
      ->check(CLI::IsMember({"eager", "lazy"}))
      ->capture_default_str();
  app.add_option("--recovery-timeout-ms", c.recovery_timeout_ms,
                 "Longest time checks of a slot wait for its state (from Redis or the previous "
                 "owner) before it is decided with what arrived")
      ->check(CLI::Range(10, 60'000))
      ->capture_default_str();
  app.add_option("--rules", c.rules,
                 "Rules file (YAML); reloaded on SIGHUP or 'throttlectl rules reload'");
  app.add_option("--threads", c.threads,
                 "Worker threads, each serving HTTP and RPC; 0 = one per core")
      ->check(CLI::Range(0, 256))
      ->capture_default_str();
  defineTimeouts(app, c);
  app.add_option("--max-keys", c.max_keys, "Hard cap on live keys held in memory")
      ->check(CLI::Range(std::uint64_t{1024}, std::uint64_t{1} << 34))
      ->capture_default_str();
  defineSecurity(app, c);
  for (CLI::Option* opt : app.get_options()) {
    opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // later sources win
  }
}

// THROTTLEX_HTTP_PORT for --http-port, and so on.
std::string envName(const std::string& long_name) {
  std::string env = "THROTTLEX_";
  for (char ch : long_name) env += ch == '-' ? '_' : static_cast<char>(std::toupper(ch));
  return env;
}

}  // namespace

std::variant<Config, int> loadConfig(int argc, const char* const* argv, const GetEnv& getenv) {
  Options o;
  CLI::App app{"throttlexd: a node of the ThrottleX distributed rate limiter", "throttlexd"};
  app.set_version_flag("--version", std::string(kVersion));
  app.get_formatter()->column_width(36);
  define(app, o);

  // Precedence is built into the argument list: file < environment < flags, with TakeLast.
  std::vector<std::string> flags(argv + 1, argv + argc);
  std::string config_file;
  for (std::size_t i = 0; i < flags.size(); ++i) {
    if (flags[i] == "--config" && i + 1 < flags.size()) config_file = flags[i + 1];
    if (flags[i].rfind("--config=", 0) == 0) config_file = flags[i].substr(9);
  }
  if (config_file.empty() && getenv("THROTTLEX_CONFIG") != nullptr)
    config_file = getenv("THROTTLEX_CONFIG");

  std::vector<std::string> args;
  try {
    if (!config_file.empty()) {
      for (const CLI::ConfigItem& item : CLI::ConfigTOML().from_file(config_file)) {
        std::string value;
        for (const auto& in : item.inputs) value += (value.empty() ? "" : ",") + in;
        args.push_back("--" + item.name + "=" + value);
      }
    }
  } catch (const CLI::Error& e) {
    std::cerr << "throttlexd: cannot read config file '" << config_file << "': " << e.what()
              << "\n";
    return 2;
  }
  for (const CLI::Option* opt : app.get_options()) {
    const std::string name = opt->get_single_name();
    if (name == "help" || name == "version" || name == "config") continue;
    const char* v = getenv(envName(name).c_str());
    if (name == "redis" && v == nullptr) v = getenv("REDIS_HOST");
    if (v != nullptr) args.push_back("--" + name + "=" + v);
  }
  args.insert(args.end(), flags.begin(), flags.end());

  std::vector<const char*> all = {argv[0]};
  for (const std::string& a : args) all.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(all.size()), all.data());
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  Config c = o.c;
  c.join = splitList(o.join);
  c.inline_limits = o.inline_limits == "on";
  c.gossip_timing = c.gossip_preset == "local" ? gossip::Timing::local()
                    : c.gossip_preset == "wan" ? gossip::Timing::wan()
                                               : gossip::Timing::lan();
  if (!c.redis.empty()) {  // validated above: host:port, port 1 to 65535
    const auto colon = c.redis.rfind(':');
    c.redis_host = c.redis.substr(0, colon);
    c.redis_port = static_cast<std::uint16_t>(std::stoi(c.redis.substr(colon + 1)));
  }
  c.lazy_recovery = c.recovery == "lazy";
  const auto wildcard = [](const std::string& a) { return a == "0.0.0.0" || a == "::"; };
  if (c.metrics_bind.empty()) c.metrics_bind = c.bind;
  if (c.advertise.empty()) c.advertise = wildcard(c.bind) ? hostname() : c.bind;
  c.metrics_advertise =
      c.metrics_bind == c.bind || wildcard(c.metrics_bind) ? c.advertise : c.metrics_bind;
  if (c.node_id.empty()) {
    // With --http-port 0 the port is not known yet; the pid keeps ids on one host apart.
    c.node_id = hostname() + ":" +
                (c.http_port != 0 ? std::to_string(c.http_port) : "pid" + std::to_string(getpid()));
  }
  if (c.threads == 0) c.threads = std::max(1, static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)));
  return c;
}

}  // namespace throttlex

// loadConfig (daemon/node/config.h): what an operator types — flags, THROTTLEX_* variables, a
// config file — becomes one typed Config, or a clear usage error (exit code 2), never a crash.
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "daemon/node/config.h"

using namespace throttlex;

namespace {

struct Env {
  std::map<std::string, std::string> vars;
  GetEnv get() const {
    return [this](const char* name) -> const char* {
      const auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

std::variant<Config, int> load(std::vector<std::string> args, const Env& env = {}) {
  args.insert(args.begin(), "throttlexd");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return loadConfig(static_cast<int>(argv.size()), argv.data(), env.get());
}

Config ok(std::vector<std::string> args, const Env& env = {}) {
  auto loaded = load(std::move(args), env);
  REQUIRE(std::holds_alternative<Config>(loaded));
  return std::get<Config>(loaded);
}

int usageError(std::vector<std::string> args) {
  // CLI11 prints the message to stderr; the exit code is what an init system sees.
  auto loaded = load(std::move(args));
  REQUIRE(std::holds_alternative<int>(loaded));
  return std::get<int>(loaded);
}

}  // namespace

TEST_CASE("defaults: memory only, LAN gossip, eager recovery, T of 500 ms") {
  const Config c = ok({"--node-id", "n1"});
  CHECK(c.node_id == "n1");
  CHECK(c.redis.empty());
  CHECK(c.redis_port == 0);
  CHECK(c.gossip_timing.protocol_period == gossip::Timing::lan().protocol_period);
  CHECK_FALSE(c.lazy_recovery);
  CHECK(c.owner_silence_ms == 500);
  CHECK(c.threads >= 1);  // 0 means one per core
  CHECK(c.inline_limits);
  CHECK(c.metrics_bind == c.bind);
}

TEST_CASE("named rules only, and /metrics on an address of its own") {
  const Config c =
      ok({"--inline-limits", "off", "--bind", "10.0.0.5", "--metrics-bind", "127.0.0.1"});
  CHECK_FALSE(c.inline_limits);
  CHECK(c.bind == "10.0.0.5");
  CHECK(c.metrics_bind == "127.0.0.1");
  CHECK(ok({"--inline-limits", "on"}).inline_limits);
  CHECK(ok({}).max_connections == 0);  // derived from the descriptor limit at start
  CHECK(ok({"--max-connections", "500"}).max_connections == 500);
  CHECK(usageError({"--max-connections", "-1"}) == 2);
  CHECK(usageError({"--inline-limits", "no"}) == 2);
}

TEST_CASE("the Redis address, gossip preset and recovery mode are parsed once, typed") {
  const Config c =
      ok({"--redis", "cache.internal:6390", "--gossip-preset", "local", "--recovery", "lazy"});
  CHECK(c.redis == "cache.internal:6390");
  CHECK(c.redis_host == "cache.internal");
  CHECK(c.redis_port == 6390);
  CHECK(c.gossip_timing.protocol_period == gossip::Timing::local().protocol_period);
  CHECK(c.lazy_recovery);
}

TEST_CASE("flags win over THROTTLEX_* variables, which win over the config file") {
  char path[] = "/tmp/throttlex-config-test-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  {
    std::ofstream file(path);
    file << "http-port = 8181\nrpc-port = 7411\ncluster-name = \"from-file\"\n";
  }
  Env env;
  env.vars["THROTTLEX_RPC_PORT"] = "7422";
  env.vars["THROTTLEX_CLUSTER_NAME"] = "from-env";
  const Config c = ok({"--config", path, "--cluster-name", "from-flag"}, env);
  CHECK(c.http_port == 8181);  // file only
  CHECK(c.rpc_port == 7422);   // environment over file
  CHECK(c.cluster_name == "from-flag");
  std::remove(path);
  // REDIS_HOST is read too, for containers that set it.
  Env redis_env;
  redis_env.vars["REDIS_HOST"] = "redis:6379";
  CHECK(ok({}, redis_env).redis_port == 6379);
}

TEST_CASE("--forward-timeout-ms is the old name of --owner-silence-ms") {
  CHECK(ok({"--forward-timeout-ms", "800"}).owner_silence_ms == 800);
  CHECK(ok({"--owner-silence-ms", "900"}).owner_silence_ms == 900);
  Env env;
  env.vars["THROTTLEX_OWNER_SILENCE_MS"] = "700";
  CHECK(ok({}, env).owner_silence_ms == 700);
}

TEST_CASE("gossip keys: a keyring file, verification on unless turned off for a migration") {
  const Config plain = ok({});
  CHECK(plain.gossip_keyring.empty());
  const Config keyed = ok({"--gossip-keyring", "/etc/throttlex/keyring"});
  CHECK(keyed.gossip_keyring == "/etc/throttlex/keyring");
  CHECK(keyed.gossip_verify_incoming);
  CHECK(keyed.gossip_verify_outgoing);
  Env env;
  env.vars["THROTTLEX_GOSSIP_VERIFY_INCOMING"] = "false";
  const Config migrating = ok({"--gossip-keyring", "k", "--gossip-verify-outgoing=false"}, env);
  CHECK_FALSE(migrating.gossip_verify_incoming);
  CHECK_FALSE(migrating.gossip_verify_outgoing);
  CHECK(usageError({"--gossip-verify-incoming", "maybe"}) == 2);
  // RPC TLS: required and used for peers unless turned off while it is being turned on.
  CHECK(plain.tls_incoming_required);
  CHECK(plain.tls_outgoing);
  const Config tls_migrating = ok({"--tls-incoming-required=false", "--tls-outgoing", "false"});
  CHECK_FALSE(tls_migrating.tls_incoming_required);
  CHECK_FALSE(tls_migrating.tls_outgoing);
}

TEST_CASE("bad values are usage errors (exit 2), not crashes") {
  CHECK(usageError({"--redis", "no-port"}) == 2);
  CHECK(usageError({"--redis", "host:99999"}) == 2);
  CHECK(usageError({"--redis", "host:12ab"}) == 2);
  CHECK(usageError({"--owner-silence-ms", "100"}) == 2);  // T must stay above 300 ms
  CHECK(usageError({"--gossip-preset", "moon"}) == 2);
  CHECK(usageError({"--http-port", "70000"}) == 2);
  CHECK(usageError({"--no-such-flag"}) == 2);
  CHECK(usageError({"--config", "/nonexistent/throttlex.toml"}) == 2);
}

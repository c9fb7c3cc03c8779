#include "persistence/redis_layout.h"

#include <algorithm>
#include <cctype>

namespace throttlex::persistence::redis_layout {
namespace {

void putBe(std::string& out, std::uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void putLe(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
std::uint64_t getBe(std::string_view in) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v = (v << 8) | static_cast<std::uint8_t>(in[static_cast<std::size_t>(i)]);
  return v;
}
std::uint64_t getLe(std::string_view in) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i)
    v = (v << 8) | static_cast<std::uint8_t>(in[static_cast<std::size_t>(i)]);
  return v;
}

std::string slotPrefix(std::string_view cluster, std::uint32_t slot) {
  std::string k = "tx:{";
  k.append(cluster);
  k.push_back(':');
  k.append(std::to_string(slot));
  k.append("}:");
  return k;
}

}  // namespace

bool validClusterName(std::string_view cluster) {
  if (cluster.empty() || cluster.size() > 64) return false;
  return std::none_of(cluster.begin(), cluster.end(), [](char c) {
    return c == '{' || c == '}' || std::isspace(static_cast<unsigned char>(c)) != 0;
  });
}

std::string hashKey(std::string_view cluster, std::uint32_t slot) {
  return slotPrefix(cluster, slot) + "h";
}
std::string indexKey(std::string_view cluster, std::uint32_t slot) {
  return slotPrefix(cluster, slot) + "z";
}

std::string encodeField(const KeyHash& key) {
  std::string out;
  out.reserve(kFieldSize);
  putBe(out, key.hi);
  putBe(out, key.lo);
  return out;
}

std::optional<KeyHash> decodeField(std::string_view field) {
  if (field.size() != kFieldSize) return std::nullopt;
  KeyHash k{getBe(field.substr(0, 8)), getBe(field.substr(8, 8))};
  if (k.hi == 0 && k.lo == 0) return std::nullopt;
  return k;
}

std::string encodeValue(const State& state, std::int64_t expiry_ms) {
  std::string out;
  out.reserve(kValueSize);
  out.push_back(static_cast<char>(kValueVersion));
  putLe(out, state.w0);
  putLe(out, state.w1);
  putLe(out, static_cast<std::uint64_t>(expiry_ms));
  return out;
}

std::optional<Value> decodeValue(std::string_view value) {
  if (value.size() != kValueSize || static_cast<std::uint8_t>(value[0]) != kValueVersion) {
    return std::nullopt;
  }
  Value v;
  v.state.w0 = getLe(value.substr(1, 8));
  v.state.w1 = getLe(value.substr(9, 8));
  v.expiry_ms = static_cast<std::int64_t>(getLe(value.substr(17, 8)));
  if (v.state.empty() || v.expiry_ms < 0) return std::nullopt;
  return v;
}

// Lua 5.1 inside Redis 7.0. Work per call: O(entries + kCleanupPerWrite) plus the log of the
// set sizes. Keys in our namespace holding another type are foreign: deleted and counted.
const char* const kWriteScript = R"lua(
local h, z = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local foreign = 0
local th = redis.call('TYPE', h)['ok']
if th ~= 'hash' and th ~= 'none' then redis.call('DEL', h); foreign = foreign + 1 end
local tz = redis.call('TYPE', z)['ok']
if tz ~= 'zset' and tz ~= 'none' then redis.call('DEL', z); foreign = foreign + 1 end
local dead = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. ARGV[1], 'LIMIT', 0, 256)
if #dead > 0 then
  redis.call('HDEL', h, unpack(dead))
  redis.call('ZREM', z, unpack(dead))
end
for i = 2, #ARGV, 3 do
  if tonumber(ARGV[i + 2]) >= now then
    redis.call('HSET', h, ARGV[i], ARGV[i + 1])
    redis.call('ZADD', z, ARGV[i + 2], ARGV[i])
  else
    redis.call('HDEL', h, ARGV[i])
    redis.call('ZREM', z, ARGV[i])
  end
end
local top = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
if #top == 0 then
  redis.call('DEL', h, z)
else
  local at = string.format('%d', tonumber(top[2]) + 1)
  redis.call('PEXPIREAT', h, at)
  redis.call('PEXPIREAT', z, at)
end
return foreign
)lua";

}  // namespace throttlex::persistence::redis_layout

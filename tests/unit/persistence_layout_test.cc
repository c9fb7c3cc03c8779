// The Redis data layout: key names and the binary encoding of fields and values.
#include <doctest/doctest.h>

#include "persistence/redis_layout.h"

using namespace throttlex;
using namespace throttlex::persistence;
namespace layout = throttlex::persistence::redis_layout;

TEST_CASE("key names put the cluster and slot into one hash tag") {
  CHECK(layout::hashKey("prod", 17) == "tx:{prod:17}:h");
  CHECK(layout::indexKey("prod", 4095) == "tx:{prod:4095}:z");
  CHECK(layout::validClusterName("prod-eu_1"));
  CHECK_FALSE(layout::validClusterName(""));
  CHECK_FALSE(layout::validClusterName("a{b"));
  CHECK_FALSE(layout::validClusterName("a b"));
  CHECK_FALSE(layout::validClusterName(std::string(65, 'a')));
}

TEST_CASE("fields and values round-trip") {
  const KeyHash k{0x0102030405060708u, 0xf1f2f3f4f5f6f7f8u};
  const std::string f = layout::encodeField(k);
  CHECK(f.size() == layout::kFieldSize);
  CHECK(f[0] == '\x01');
  CHECK(layout::decodeField(f) == k);

  State s;
  s.w0 = (std::uint64_t{1} << 61) | (std::uint64_t{1'700'000'000'000} << 18);
  s.w1 = 0xdeadbeefcafef00du;
  const std::string v = layout::encodeValue(s, 1'700'000'000'000);
  CHECK(v.size() == layout::kValueSize);
  auto d = layout::decodeValue(v);
  REQUIRE(d);
  CHECK(d->state == s);
  CHECK(d->expiry_ms == 1'700'000'000'000);
}

TEST_CASE("anything else is rejected") {
  CHECK_FALSE(layout::decodeField("short"));
  CHECK_FALSE(layout::decodeField(std::string(16, '\0')));  // the all-zero hash is never a key
  CHECK_FALSE(layout::decodeValue(""));
  CHECK_FALSE(layout::decodeValue(std::string(25, 'x')));  // wrong version byte
  std::string empty_state = layout::encodeValue(State{}, 5);
  CHECK_FALSE(layout::decodeValue(empty_state));
  State s;
  s.w0 = std::uint64_t{1} << 61;
  std::string v = layout::encodeValue(s, 5);
  CHECK(layout::decodeValue(v));
  v.push_back('x');
  CHECK_FALSE(layout::decodeValue(v));
  CHECK_FALSE(layout::decodeValue(layout::encodeValue(s, -1)));
}

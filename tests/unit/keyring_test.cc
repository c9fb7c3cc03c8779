// The gossip keyring and sealed envelopes: what opens, what does not, and how keys rotate.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "gossip/codec.h"
#include "gossip/keyring.h"

using namespace throttlex;
using namespace throttlex::gossip;

namespace {

Message samplePing() {
  Message m;
  m.sender_id = "node-1";
  m.sender_address = "10.0.0.1:7946";
  m.type = MessageType::kPing;
  m.seq = 7;
  m.target_id = "node-2";
  Update u;
  u.state = MemberState::kLeft;
  u.id = "node-3";
  u.address = "10.0.0.3:7946";
  u.incarnation = 9;
  m.updates = {u};
  return m;
}

std::string decodeStatus(const std::vector<std::uint8_t>& bytes, const Security& security) {
  Message out;
  return nameOf(decode(bytes, "c", 1400, out, security));
}

}  // namespace

TEST_CASE("a key is 32 bytes of base64 and round-trips; its id is stable and never 0") {
  Key key = generateKey();
  std::string text = formatKey(key);
  CHECK(text.size() == 44);
  auto parsed = parseKey(text);
  REQUIRE(parsed.ok());
  CHECK(*parsed == key);
  CHECK(keyIdOf(key) == keyIdOf(*parsed));
  CHECK(keyIdOf(key) != 0);
  CHECK(parseKeyRef(formatKeyId(keyIdOf(key))).value() == keyIdOf(key));
  CHECK(parseKeyRef(text).value() == keyIdOf(key));
  CHECK_FALSE(parseKey("").ok());
  CHECK_FALSE(parseKey(text.substr(0, 43)).ok());
  CHECK_FALSE(parseKey("AAAA" + text).ok());
  std::string bad = text;
  bad[5] = '*';
  CHECK_FALSE(parseKey(bad).ok());
  CHECK_FALSE(parseKeyRef("0000000g").ok());
  CHECK_FALSE(parseKeyRef("00000000").ok());
}

TEST_CASE("the keyring file: first key primary, comments skipped, errors name the line") {
  Key a = generateKey();
  Key b = generateKey();
  Keyring ring;
  REQUIRE(ring.parse("# keys\n\n" + formatKey(a) + "\n  " + formatKey(b) + "  \n").ok());
  auto keys = ring.list();
  REQUIRE(keys.size() == 2);
  CHECK(keys[0].id == keyIdOf(a));
  CHECK(keys[0].primary);
  CHECK_FALSE(keys[1].primary);
  Keyring copy;
  REQUIRE(copy.parse(ring.serialize()).ok());
  CHECK(copy.list().size() == 2);
  CHECK(copy.list()[0].id == keyIdOf(a));

  Keyring broken;
  auto st = broken.parse(formatKey(a) + "\nnot-a-key\n");
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("line 2") != std::string::npos);
}

TEST_CASE("install, use and remove: the primary cannot be removed, unknown ids are refused") {
  Keyring ring;
  Key a = generateKey();
  Key b = generateKey();
  REQUIRE(ring.install(a).ok());
  REQUIRE(ring.install(a).ok());  // idempotent
  REQUIRE(ring.install(b).ok());
  CHECK(ring.list().size() == 2);
  CHECK(ring.list()[0].id == keyIdOf(a));
  CHECK_FALSE(ring.remove(keyIdOf(a)).ok());
  CHECK(ring.remove(0x12345678).error().code == ErrorCode::kNotFound);
  CHECK(ring.use(0x12345678).error().code == ErrorCode::kNotFound);
  REQUIRE(ring.use(keyIdOf(b)).ok());
  CHECK(ring.list()[0].id == keyIdOf(b));
  REQUIRE(ring.remove(keyIdOf(a)).ok());
  CHECK(ring.list().size() == 1);
  for (std::size_t i = 1; i < kMaxKeys; ++i) REQUIRE(ring.install(generateKey()).ok());
  CHECK(ring.install(generateKey()).error().code == ErrorCode::kResourceExhausted);
}

TEST_CASE("a sealed packet opens with the key, and with nothing else") {
  Keyring ring;
  REQUIRE(ring.install(generateKey()).ok());
  Keyring other;
  REQUIRE(other.install(generateKey()).ok());
  Security keyed{&ring};
  auto sealed = encode(samplePing(), "c", keyed);
  Message out;
  REQUIRE(decode(sealed, "c", 1400, out, keyed) == DecodeStatus::kOk);
  CHECK(out.type == MessageType::kPing);
  CHECK(out.seq == 7);
  REQUIRE(out.updates.size() == 1);
  CHECK(out.updates[0].state == MemberState::kLeft);

  // The body is not readable in transit: the member id does not appear in the bytes.
  std::string raw(sealed.begin(), sealed.end());
  CHECK(raw.find("node-3") == std::string::npos);
  CHECK(decodeStatus(sealed, Security{&other}) == std::string("authentication failed"));
  CHECK(decodeStatus(sealed, Security{}) == std::string("unauthenticated"));
  // Another cluster's name is authenticated too: the same bytes under another name fail.
  CHECK(decode(sealed, "d", 1400, out, keyed) == DecodeStatus::kForeignCluster);
}

TEST_CASE("with keys, a plain packet is refused unless incoming verification is off") {
  Keyring ring;
  REQUIRE(ring.install(generateKey()).ok());
  auto plain = encode(samplePing(), "c");
  CHECK(decodeStatus(plain, Security{&ring}) == std::string("unauthenticated"));
  CHECK(decodeStatus(plain, Security{&ring, false, true}) == std::string("ok"));
  // Outgoing verification off: packets leave plain, readable by nodes without keys.
  auto unsealed = encode(samplePing(), "c", Security{&ring, false, false});
  CHECK(decodeStatus(unsealed, Security{}) == std::string("ok"));
  // An empty keyring is no keyring: plain out, plain accepted.
  Keyring empty;
  CHECK(decodeStatus(encode(samplePing(), "c", Security{&empty}), Security{&empty}) ==
        std::string("ok"));
}

TEST_CASE("every flipped byte of a sealed packet is refused, none parses") {
  Keyring ring;
  REQUIRE(ring.install(generateKey()).ok());
  Security keyed{&ring};
  auto sealed = encode(samplePing(), "c", keyed);
  std::size_t accepted = 0;
  for (std::size_t i = 0; i < sealed.size(); ++i) {
    for (std::uint8_t flip : {std::uint8_t{0x01}, std::uint8_t{0x80}}) {
      auto bytes = sealed;
      bytes[i] ^= flip;
      Message out;
      auto status = decode(bytes, "c", 1400, out, keyed);
      accepted += status == DecodeStatus::kOk ? 1u : 0u;
    }
  }
  CHECK(accepted == 0);
}

TEST_CASE("rotation: after install and use, packets sealed with either key open") {
  Key old_key = generateKey();
  Key new_key = generateKey();
  Keyring a;
  Keyring b;
  REQUIRE(a.install(old_key).ok());
  REQUIRE(b.install(old_key).ok());
  REQUIRE(a.install(new_key).ok());
  REQUIRE(b.install(new_key).ok());
  REQUIRE(a.use(keyIdOf(new_key)).ok());  // a switched, b not yet
  Message out;
  CHECK(decode(encode(samplePing(), "c", Security{&a}), "c", 1400, out, Security{&b}) ==
        DecodeStatus::kOk);
  CHECK(decode(encode(samplePing(), "c", Security{&b}), "c", 1400, out, Security{&a}) ==
        DecodeStatus::kOk);
  REQUIRE(b.use(keyIdOf(new_key)).ok());
  REQUIRE(a.remove(keyIdOf(old_key)).ok());
  CHECK(decode(encode(samplePing(), "c", Security{&b}), "c", 1400, out, Security{&a}) ==
        DecodeStatus::kOk);
}

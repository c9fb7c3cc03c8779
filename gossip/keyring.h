// The cluster keyring: the keys that authenticate and encrypt every gossip packet and stream.
//
// AES-256-GCM (OpenSSL libcrypto). A packet is sealed with the primary key; any installed key
// opens one, so keys rotate without a gap (as HashiCorp memberlist's keyring): install the new key
// on every node, make it primary on every node, then remove the old one. A key's id is derived from
// the key itself (the first four bytes of its SHA-256), so nodes agree on ids without talking.
//
// Thread-safe: the gossip thread seals and opens while an operator's Admin call changes the keys.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "limiter/mutex.h"
#include "limiter/result.h"

namespace throttlex::gossip {

inline constexpr std::size_t kKeyBytes = 32;                        // AES-256
inline constexpr std::size_t kNonceBytes = 12;                      // GCM's 96-bit nonce, random
inline constexpr std::size_t kTagBytes = 16;                        // GCM's full tag
inline constexpr std::size_t kAuthBytes = kNonceBytes + kTagBytes;  // the envelope's `auth`
inline constexpr std::size_t kMaxKeys = 16;                         // installed at once

using Key = std::array<std::uint8_t, kKeyBytes>;

// A key as operators write it: 32 bytes in standard base64 (44 characters).
Result<Key> parseKey(std::string_view base64);
std::string formatKey(const Key& key);
Key generateKey();                          // from OpenSSL's CSPRNG
std::uint32_t keyIdOf(const Key& key);      // never 0 (0 means "not sealed" on the wire)
std::string formatKeyId(std::uint32_t id);  // 8 hex digits
// "8 hex digits" (an id) or a base64 key (its id); what `throttlectl keyring use|remove` take.
Result<std::uint32_t> parseKeyRef(std::string_view text);

struct KeyInfo {
  std::uint32_t id = 0;
  bool primary = false;
};

struct Sealed {
  std::uint32_t key_id = 0;
  std::array<std::uint8_t, kAuthBytes> auth{};  // nonce, then tag
  std::vector<std::uint8_t> ciphertext;         // as long as the plaintext
};

class Keyring {
 public:
  Keyring() = default;
  Keyring(const Keyring&) = delete;
  Keyring& operator=(const Keyring&) = delete;
  ~Keyring();  // wipes the keys

  // The keyring file: one base64 key per line, the first is the primary; blank lines and lines
  // starting with '#' are ignored. Errors name the line.
  Status parse(std::string_view text);
  std::string serialize() const;  // the file's form, primary first

  // Adds `key` (a no-op if installed). The first key installed becomes the primary.
  Status install(const Key& key);
  // Makes an installed key the primary: packets are sealed with it from now on.
  Status use(std::uint32_t id);
  // Removes an installed key that is not the primary.
  Status remove(std::uint32_t id);
  std::vector<KeyInfo> list() const;  // primary first
  bool empty() const;

  // Seals `plaintext` with the primary key; `aad` and the key's id are authenticated, not
  // encrypted. nullopt when the keyring is empty (or OpenSSL fails).
  std::optional<Sealed> seal(std::span<const std::uint8_t> plaintext,
                             std::span<const std::uint8_t> aad) const;
  // The plaintext if `key_id` is installed and the tag verifies over ciphertext, aad and key id.
  std::optional<std::vector<std::uint8_t>> open(std::uint32_t key_id,
                                                std::span<const std::uint8_t> auth,
                                                std::span<const std::uint8_t> ciphertext,
                                                std::span<const std::uint8_t> aad) const;

 private:
  struct Entry {
    std::uint32_t id;
    Key key;
  };
  Status installLocked(const Key& key) REQUIRES(mu_);

  mutable Mutex mu_;
  std::vector<Entry> keys_ GUARDED_BY(mu_);  // keys_[0] is the primary
};

}  // namespace throttlex::gossip

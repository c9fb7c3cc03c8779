#include "gossip/keyring.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <memory>

namespace throttlex::gossip {
namespace {

constexpr std::size_t kBase64KeyChars = 44;  // 32 bytes: 10 full groups + one with one '='

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

int len(std::size_t n) {
  return static_cast<int>(n);
}

std::string_view trimmed(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// The authenticated data: the caller's, then the key id (big-endian), so a packet cannot be
// presented under another key's id.
std::vector<std::uint8_t> withKeyId(std::span<const std::uint8_t> aad, std::uint32_t id) {
  std::vector<std::uint8_t> out(aad.begin(), aad.end());
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<std::uint8_t>(id >> shift));
  return out;
}

bool sealWith(const Key& key, std::span<const std::uint8_t> plaintext,
              std::span<const std::uint8_t> aad, Sealed& out) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx || RAND_bytes(out.auth.data(), len(kNonceBytes)) != 1) return false;
  int n = 0;
  out.ciphertext.resize(plaintext.size());
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), out.auth.data()) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &n, aad.data(), len(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), out.ciphertext.data(), &n, plaintext.data(),
                        len(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out.ciphertext.data() + n, &n) != 1) {
    return false;
  }
  return EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, len(kTagBytes),
                             out.auth.data() + kNonceBytes) == 1;
}

bool openWith(const Key& key, std::span<const std::uint8_t> auth,
              std::span<const std::uint8_t> ciphertext, std::span<const std::uint8_t> aad,
              std::vector<std::uint8_t>& out) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return false;
  std::array<std::uint8_t, kTagBytes> tag{};
  std::copy_n(auth.data() + kNonceBytes, kTagBytes, tag.begin());
  int n = 0;
  out.resize(ciphertext.size());
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), auth.data()) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &n, aad.data(), len(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), out.data(), &n, ciphertext.data(), len(ciphertext.size())) !=
          1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, len(kTagBytes), tag.data()) != 1) {
    return false;
  }
  return EVP_DecryptFinal_ex(ctx.get(), out.data() + n, &n) == 1;
}

}  // namespace

Result<Key> parseKey(std::string_view base64) {
  base64 = trimmed(base64);
  if (base64.size() != kBase64KeyChars || base64.back() != '=' ||
      base64.find('=') != kBase64KeyChars - 1) {
    return invalidArgument("a gossip key is 32 bytes in base64 (44 characters ending in '=')");
  }
  std::array<unsigned char, 33> raw{};  // EVP_DecodeBlock counts the padding as a zero byte
  int n = EVP_DecodeBlock(raw.data(), reinterpret_cast<const unsigned char*>(base64.data()),
                          len(base64.size()));
  if (n != 33) return invalidArgument("a gossip key is not valid base64");
  Key key{};
  std::copy_n(raw.begin(), kKeyBytes, key.begin());
  OPENSSL_cleanse(raw.data(), raw.size());
  return key;
}

std::string formatKey(const Key& key) {
  std::array<unsigned char, kBase64KeyChars + 1> out{};
  EVP_EncodeBlock(out.data(), key.data(), len(key.size()));
  return std::string(reinterpret_cast<const char*>(out.data()), kBase64KeyChars);
}

Key generateKey() {
  Key key{};
  if (RAND_bytes(key.data(), len(key.size())) != 1) {
    std::fputs("throttlex: OpenSSL's random generator failed\n", stderr);
    std::abort();
  }
  return key;
}

std::uint32_t keyIdOf(const Key& key) {
  std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
  SHA256(key.data(), key.size(), digest.data());
  std::uint32_t id = (std::uint32_t{digest[0]} << 24) | (std::uint32_t{digest[1]} << 16) |
                     (std::uint32_t{digest[2]} << 8) | std::uint32_t{digest[3]};
  return id == 0 ? 1 : id;
}

std::string formatKeyId(std::uint32_t id) {
  std::array<char, 9> out{};
  std::snprintf(out.data(), out.size(), "%08x", id);
  return std::string(out.data(), 8);
}

Result<std::uint32_t> parseKeyRef(std::string_view text) {
  text = trimmed(text);
  if (text.size() == 8) {
    std::uint32_t id = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id, 16);
    if (ec == std::errc() && end == text.data() + text.size() && id != 0) return id;
  }
  auto key = parseKey(text);
  if (!key) return invalidArgument("expected a key id (8 hex digits) or a base64 key");
  return keyIdOf(*key);
}

Keyring::~Keyring() {
  MutexLock lock(mu_);
  for (auto& e : keys_) OPENSSL_cleanse(e.key.data(), e.key.size());
}

Status Keyring::parse(std::string_view text) {
  MutexLock lock(mu_);
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    auto nl = text.find('\n');
    std::string_view line = trimmed(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.empty() || line.front() == '#') continue;
    auto key = parseKey(line);
    if (!key)
      return invalidArgument("line " + std::to_string(line_no) + ": " + key.error().message);
    auto st = installLocked(*key);
    if (!st) return invalidArgument("line " + std::to_string(line_no) + ": " + st.error().message);
  }
  return Ok{};
}

std::string Keyring::serialize() const {
  MutexLock lock(mu_);
  std::string out = "# ThrottleX gossip keyring: the first key seals, every key opens.\n";
  for (const auto& e : keys_) out += formatKey(e.key) + "\n";
  return out;
}

Status Keyring::install(const Key& key) {
  MutexLock lock(mu_);
  return installLocked(key);
}

Status Keyring::installLocked(const Key& key) {
  std::uint32_t id = keyIdOf(key);
  for (const auto& e : keys_) {
    if (e.id != id) continue;
    if (e.key == key) return Ok{};
    return {Error{ErrorCode::kInvalidArgument, "another key has the same id " + formatKeyId(id)}};
  }
  if (keys_.size() >= kMaxKeys) {
    return {Error{ErrorCode::kResourceExhausted,
                  "the keyring holds " + std::to_string(kMaxKeys) + " keys; remove one first"}};
  }
  keys_.push_back({id, key});
  return Ok{};
}

Status Keyring::use(std::uint32_t id) {
  MutexLock lock(mu_);
  auto it = std::find_if(keys_.begin(), keys_.end(), [&](const Entry& e) { return e.id == id; });
  if (it == keys_.end()) {
    return {Error{ErrorCode::kNotFound, "no key " + formatKeyId(id) + " is installed"}};
  }
  std::rotate(keys_.begin(), it, it + 1);
  return Ok{};
}

Status Keyring::remove(std::uint32_t id) {
  MutexLock lock(mu_);
  auto it = std::find_if(keys_.begin(), keys_.end(), [&](const Entry& e) { return e.id == id; });
  if (it == keys_.end()) {
    return {Error{ErrorCode::kNotFound, "no key " + formatKeyId(id) + " is installed"}};
  }
  if (it == keys_.begin()) {
    return invalidArgument("key " + formatKeyId(id) +
                           " is the primary; make another key primary first (keyring use)");
  }
  OPENSSL_cleanse(it->key.data(), it->key.size());
  keys_.erase(it);
  return Ok{};
}

std::vector<KeyInfo> Keyring::list() const {
  MutexLock lock(mu_);
  std::vector<KeyInfo> out;
  for (std::size_t i = 0; i < keys_.size(); ++i) out.push_back({keys_[i].id, i == 0});
  return out;
}

bool Keyring::empty() const {
  MutexLock lock(mu_);
  return keys_.empty();
}

std::optional<Sealed> Keyring::seal(std::span<const std::uint8_t> plaintext,
                                    std::span<const std::uint8_t> aad) const {
  MutexLock lock(mu_);
  if (keys_.empty()) return std::nullopt;
  Sealed out;
  out.key_id = keys_.front().id;
  if (!sealWith(keys_.front().key, plaintext, withKeyId(aad, out.key_id), out)) return std::nullopt;
  return out;
}

std::optional<std::vector<std::uint8_t>> Keyring::open(std::uint32_t key_id,
                                                       std::span<const std::uint8_t> auth,
                                                       std::span<const std::uint8_t> ciphertext,
                                                       std::span<const std::uint8_t> aad) const {
  if (auth.size() != kAuthBytes) return std::nullopt;
  MutexLock lock(mu_);
  for (const auto& e : keys_) {
    if (e.id != key_id) continue;
    std::vector<std::uint8_t> out;
    if (!openWith(e.key, auth, ciphertext, withKeyId(aad, key_id), out)) return std::nullopt;
    return out;
  }
  return std::nullopt;
}

}  // namespace throttlex::gossip

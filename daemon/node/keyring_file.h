// The gossip keyring (gossip/keyring.h) and the file it lives in: read at start, written back
// after every change an operator makes over Admin RPC (`throttlectl keyring`), so a restarted
// node comes back with the keys it had.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "daemon/base/node_control.h"
#include "gossip/keyring.h"
#include "limiter/mutex.h"
#include "limiter/result.h"

namespace throttlex {

class KeyringFile {
 public:
  // Reads `path`; an unreadable file, a bad line or a file without keys is an error.
  static Result<std::unique_ptr<KeyringFile>> load(std::string path);

  std::shared_ptr<const gossip::Keyring> keyring() const { return keyring_; }

  // Lists, or installs / makes primary / removes one key and saves the file (atomically: a
  // temporary file renamed over it). Changes are serialised; the keyring after the call.
  Result<std::vector<KeyringKey>> apply(KeyringOp op, const std::string& key);

 private:
  KeyringFile(std::string path, std::shared_ptr<gossip::Keyring> keyring)
      : path_(std::move(path)), keyring_(std::move(keyring)) {}
  Status save() REQUIRES(mu_);
  std::vector<KeyringKey> keys() const;

  const std::string path_;
  const std::shared_ptr<gossip::Keyring> keyring_;
  Mutex mu_;  // one change (and its save) at a time
};

}  // namespace throttlex

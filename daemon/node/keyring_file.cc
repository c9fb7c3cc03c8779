#include "daemon/node/keyring_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "daemon/base/log.h"

namespace throttlex {
namespace {

Error fileError(const std::string& what, const std::string& path) {
  return {ErrorCode::kUnavailable, what + " " + path + ": " + std::strerror(errno)};
}

// Writes `text` to `path` with mode 0600 through a temporary file and a rename, so a crash
// leaves the old file or the new one, never half of one.
Status writeAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fileError("cannot create", tmp);
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Error e = fileError("cannot write", tmp);
      ::close(fd);
      return e;
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) return fileError("cannot write", tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fileError("cannot replace", path);
  return Ok{};
}

}  // namespace

Result<std::unique_ptr<KeyringFile>> KeyringFile::load(std::string path) {
  std::ifstream in(path);
  if (!in) return Error{ErrorCode::kInvalidArgument, "cannot read " + path};
  std::stringstream text;
  text << in.rdbuf();
  auto keyring = std::make_shared<gossip::Keyring>();
  if (Status st = keyring->parse(text.str()); !st) {
    return Error{ErrorCode::kInvalidArgument, path + ": " + st.error().message};
  }
  if (keyring->empty()) {
    return Error{ErrorCode::kInvalidArgument,
                 path + ": no key (create one with 'throttlectl keyring generate')"};
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    logWarn("gossip keyring " + path + " is readable by others than its owner (chmod 600 it)");
  }
  return std::unique_ptr<KeyringFile>(new KeyringFile(std::move(path), std::move(keyring)));
}

std::vector<KeyringKey> KeyringFile::keys() const {
  std::vector<KeyringKey> out;
  for (const gossip::KeyInfo& k : keyring_->list()) {
    out.push_back({gossip::formatKeyId(k.id), k.primary});
  }
  return out;
}

Result<std::vector<KeyringKey>> KeyringFile::apply(KeyringOp op, const std::string& key) {
  MutexLock lock(mu_);
  Status changed = Ok{};
  switch (op) {
    case KeyringOp::kList:
      return keys();
    case KeyringOp::kInstall: {
      auto parsed = gossip::parseKey(key);
      if (!parsed) return parsed.error();
      changed = keyring_->install(*parsed);
      break;
    }
    case KeyringOp::kUse:
    case KeyringOp::kRemove: {
      auto id = gossip::parseKeyRef(key);
      if (!id) return id.error();
      changed = op == KeyringOp::kUse ? keyring_->use(*id) : keyring_->remove(*id);
      break;
    }
  }
  if (!changed) return changed.error();
  if (Status saved = save(); !saved) {
    return Error{saved.error().code,
                 "changed in memory but not saved (a restart loses it): " + saved.error().message};
  }
  return keys();
}

Status KeyringFile::save() {
  return writeAtomically(path_, keyring_->serialize());
}

}  // namespace throttlex

#include "persistence/hiredis_asio.h"

#include <memory>
#include <system_error>

#include <asio/posix/stream_descriptor.hpp>

namespace throttlex::persistence {
namespace {

// Held by hiredis (ev.data, through a heap shared_ptr) and by every pending wait, so a wait that
// completes after cleanup finds `ac == nullptr` instead of a freed context.
class Adapter : public std::enable_shared_from_this<Adapter> {
 public:
  Adapter(redisAsyncContext* ac, asio::io_context& io) : ac_(ac), sd_(io) {}

  bool assign(int fd) {
    std::error_code ec;
    sd_.assign(fd, ec);
    return !ec;
  }

  void addRead() {
    want_read_ = true;
    armRead();
  }
  void delRead() { want_read_ = false; }
  void addWrite() {
    want_write_ = true;
    armWrite();
  }
  void delWrite() { want_write_ = false; }

  void cleanup() {
    ac_ = nullptr;
    want_read_ = want_write_ = false;
    if (sd_.is_open()) {
      std::error_code ec;
      sd_.cancel(ec);
      sd_.release();  // hiredis closes the socket itself
    }
  }

 private:
  void armRead() {
    if (read_armed_ || ac_ == nullptr) return;
    read_armed_ = true;
    sd_.async_wait(asio::posix::stream_descriptor::wait_read,
                   [self = shared_from_this()](const std::error_code& ec) {
                     self->read_armed_ = false;
                     if (ec == asio::error::operation_aborted || self->ac_ == nullptr) return;
                     if (!self->want_read_) return;
                     redisAsyncHandleRead(self->ac_);  // may free the context (cleanup runs)
                     if (self->want_read_) self->armRead();
                   });
  }

  void armWrite() {
    if (write_armed_ || ac_ == nullptr) return;
    write_armed_ = true;
    sd_.async_wait(asio::posix::stream_descriptor::wait_write,
                   [self = shared_from_this()](const std::error_code& ec) {
                     self->write_armed_ = false;
                     if (ec == asio::error::operation_aborted || self->ac_ == nullptr) return;
                     if (!self->want_write_) return;
                     redisAsyncHandleWrite(self->ac_);
                     if (self->want_write_) self->armWrite();
                   });
  }

  redisAsyncContext* ac_;
  asio::posix::stream_descriptor sd_;
  bool want_read_ = false;
  bool want_write_ = false;
  bool read_armed_ = false;
  bool write_armed_ = false;
};

using Holder = std::shared_ptr<Adapter>;
Adapter& adapterOf(void* data) {
  return **static_cast<Holder*>(data);
}

}  // namespace

bool attachToAsio(redisAsyncContext* ac, asio::io_context& io) {
  if (ac->ev.data != nullptr) return false;
  auto holder = std::make_unique<Holder>(std::make_shared<Adapter>(ac, io));
  if (!(*holder)->assign(ac->c.fd)) return false;
  ac->ev.data = holder.release();
  ac->ev.addRead = [](void* d) { adapterOf(d).addRead(); };
  ac->ev.delRead = [](void* d) { adapterOf(d).delRead(); };
  ac->ev.addWrite = [](void* d) { adapterOf(d).addWrite(); };
  ac->ev.delWrite = [](void* d) { adapterOf(d).delWrite(); };
  ac->ev.cleanup = [](void* d) {
    // Takes back the ownership handed to hiredis; pending waits keep the adapter alive.
    const std::unique_ptr<Holder> owned(static_cast<Holder*>(d));
    (*owned)->cleanup();
  };
  return true;
}

}  // namespace throttlex::persistence

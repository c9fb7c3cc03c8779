// Result<T>: the channel for expected failures (bad input, peer down, Redis down, bad config).
//
// Bugs are caught by assertions; anything the outside world can cause travels as an Error value.
// Business logic never throws. Modelled on std::expected (C++23), which GCC 12 does not ship.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace throttlex {

enum class ErrorCode {
  kInvalidArgument,    // the caller sent something out of range or malformed
  kNotFound,           // a named thing (rule, key, member) does not exist
  kUnavailable,        // a dependency (peer, Redis) cannot be reached right now
  kDeadlineExceeded,   // a call ran past its deadline
  kResourceExhausted,  // a bound (queue, memory cap) was hit
  kInternal,           // an invariant broke; should not happen
  kNotDecided,         // a forwarded check came up after its decide-by time: nothing was spent
  kPermissionDenied,   // the caller's credentials do not allow the call
};

struct Error {
  ErrorCode code;
  std::string message;
};

inline Error invalidArgument(std::string message) {
  return {ErrorCode::kInvalidArgument, std::move(message)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design, like expected
  Result(Error error) : v_(std::move(error)) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }

  const T& value() const& {
    assert(ok());
    return std::get<T>(v_);
  }
  T& value() & {
    assert(ok());
    return std::get<T>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<T>(std::move(v_));
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

  const Error& error() const {
    assert(!ok());
    return std::get<Error>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

// For operations that return nothing but can fail.
struct Ok {};
using Status = Result<Ok>;

}  // namespace throttlex

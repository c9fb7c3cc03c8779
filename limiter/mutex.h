// A mutex that clang's thread-safety analysis understands (-Wthread-safety, run by clang-tidy in
// CI): state a lock protects is declared GUARDED_BY(that lock), functions that expect it held
// say REQUIRES(it), and reading or writing such state without the lock fails the build.
// libstdc++'s std::mutex carries no annotations, hence this thin wrapper (no cost: inline
// forwarding). GCC ignores the attributes.
#pragma once

#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define THROTTLEX_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define THROTTLEX_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) THROTTLEX_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY THROTTLEX_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) THROTTLEX_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) THROTTLEX_THREAD_ANNOTATION(pt_guarded_by(x))
#define REQUIRES(...) THROTTLEX_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define ACQUIRE(...) THROTTLEX_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) THROTTLEX_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define EXCLUDES(...) THROTTLEX_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define NO_THREAD_SAFETY_ANALYSIS THROTTLEX_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace throttlex {

class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  std::mutex& native() { return mu_; }  // for MutexLock only

 private:
  std::mutex mu_;
};

// Holds `mu` for its scope (std::lock_guard), or until unlock(). A condition variable waits on
// native(); its predicate runs with the lock held, which a lambda says with REQUIRES(mu).
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : lock_(mu.native()) {}
  ~MutexLock() RELEASE() {}
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void lock() ACQUIRE() { lock_.lock(); }
  void unlock() RELEASE() { lock_.unlock(); }
  std::unique_lock<std::mutex>& native() { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace throttlex

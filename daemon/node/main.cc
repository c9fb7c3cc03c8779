// throttlexd: reads the configuration, constructs the system clock, starts a Node
// (daemon/node/node.h) and turns signals into calls on it. The only place that reads flags, the
// environment and the system clock, and that handles signals.
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <string>

#include "daemon/base/log.h"
#include "daemon/node/config.h"
#include "daemon/node/node.h"

using namespace throttlex;

namespace {

// SIGINT, SIGTERM and SIGHUP become one byte each on this pipe (the self-pipe trick), read by
// main(). A handler, not sigwait(): a thread that did not block the signals (a runtime's own,
// started before main, as ASan's) would otherwise take SIGTERM with its default action.
int g_signal_pipe[2] = {-1, -1};

extern "C" void onSignal(int sig) {
  const int saved = errno;
  const auto byte = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = ::write(g_signal_pipe[1], &byte, 1);
  errno = saved;
}

bool installSignalHandlers() {
  if (::pipe2(g_signal_pipe, O_CLOEXEC) != 0) return false;
  struct sigaction action {};
  action.sa_handler = onSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int s : {SIGINT, SIGTERM, SIGHUP}) {
    if (::sigaction(s, &action, nullptr) != 0) return false;
  }
  std::signal(SIGPIPE, SIG_IGN);
  return true;
}

int nextSignal() {
  unsigned char byte = 0;
  while (::read(g_signal_pipe[0], &byte, 1) != 1) {
    if (errno != EINTR) return SIGTERM;  // the pipe broke: stop as asked to by the system
  }
  return byte;
}

}  // namespace

int main(int argc, char** argv) {
  // RPC batches allocate and free message buffers of ~100 KiB many times a second on every
  // thread; glibc's default trim hands such memory back to the kernel on each free (madvise,
  // page faults, TLB shootdowns). Keep up to 64 MiB per arena instead. Setting it also freezes
  // glibc's otherwise self-raising mmap threshold at 128 KiB, and a batch of 1,000 checks has
  // vectors above that (each then mmapped, faulted in and unmapped per call): raise it to 1 MiB,
  // above a batch's buffers, so that larger allocations still come from, and go back to, the
  // kernel directly. The price: freed batch buffers stay in the threads' arenas (~40 MB more per
  // node after heavy batch load; the seed plan's RSS per key 52 B against 48 B without;
  // docs/benchmarks.md, "Then and now").
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  SystemClock clock;
  setLogClock(&clock);
  auto loaded = loadConfig(argc, argv, [](const char* name) { return std::getenv(name); });
  if (const int* code = std::get_if<int>(&loaded)) return *code;
  const Config config = std::get<Config>(std::move(loaded));

  // The node's threads block the signals (they inherit this mask), so the handler runs on this
  // thread or on a thread that was never ours; main unblocks them once the node runs.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  if (!installSignalHandlers()) {
    logError("cannot install signal handlers");
    return 1;
  }

  // throttlectl drain takes the same path as a SIGTERM from outside.
  auto node = Node::start(config, clock, [] { ::kill(::getpid(), SIGTERM); });
  if (!node) {
    logError(node.error().message);
    return 1;
  }
  pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
  for (;;) {
    const int sig = nextSignal();
    if (sig == SIGHUP) {
      auto r = (*node)->reloadRules();
      if (r) {
        logInfo("rules reloaded: " + std::to_string(*r) + " rules");
      } else {
        logError("rules reload failed, keeping the old rules: " + r.error().message);
      }
      auto t = (*node)->reloadTls();
      if (!t) {
        logError("TLS reload failed, keeping the old certificates: " + t.error().message);
      } else if (*t) {
        logInfo("TLS certificates reloaded: new connections use them");
      }
      continue;
    }
    logInfo(std::string("shutting down on ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
    break;
  }
  (*node)->stop();
  logInfo("stopped");
  return 0;
}

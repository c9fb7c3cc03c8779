// throttlexd: reads the configuration, constructs the system clock, starts a Node
// (daemon/node/node.h) and turns signals into calls on it. The only place that reads flags, the
// environment and the system clock, and that handles signals.
#include <malloc.h>
#include <pthread.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <string>

#include "daemon/base/log.h"
#include "daemon/node/config.h"
#include "daemon/node/node.h"

using namespace throttlex;

int main(int argc, char** argv) {
  // RPC batches allocate and free message buffers of ~100 KiB many times a second on every
  // thread; glibc's default trim hands such memory back to the kernel on each free (madvise,
  // page faults, TLB shootdowns). Keep up to 64 MiB per arena instead.
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  SystemClock clock;
  setLogClock(&clock);
  auto loaded = loadConfig(argc, argv, [](const char* name) { return std::getenv(name); });
  if (const int* code = std::get_if<int>(&loaded)) return *code;
  const Config config = std::get<Config>(std::move(loaded));

  // Signals are taken synchronously by this thread (sigwait below); block them before any other
  // thread starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  // throttlectl drain takes the same path as a SIGTERM from outside.
  auto node = Node::start(config, clock, [] { ::kill(::getpid(), SIGTERM); });
  if (!node) {
    logError(node.error().message);
    return 1;
  }
  for (;;) {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGHUP) {
      auto r = (*node)->reloadRules();
      if (r) {
        logInfo("rules reloaded: " + std::to_string(*r) + " rules");
      } else {
        logError("rules reload failed, keeping the old rules: " + r.error().message);
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

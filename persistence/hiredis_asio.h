// Runs a hiredis 0.14 async context on an Asio io_context: hiredis' event hooks (addRead, delRead,
// addWrite, delWrite, cleanup) become async_wait()s on a stream_descriptor over hiredis' socket.
//
// Threads: everything, including attach(), runs on the io_context's (single) thread.
// Lifetime: hiredis owns the socket and closes it; the adapter releases the descriptor in the
// cleanup hook (called by hiredis before it frees the context), so Asio never closes it and no
// pending wait touches a freed context.
#pragma once

#include <hiredis/async.h>

#include <asio/io_context.hpp>

namespace throttlex::persistence {

// Installs the hooks on `ac` (which must have no event library attached yet). Returns false if
// the socket cannot be registered with Asio; the caller then frees `ac`.
bool attachToAsio(redisAsyncContext* ac, asio::io_context& io);

}  // namespace throttlex::persistence

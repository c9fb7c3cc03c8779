// The limiter core's public header: everything a caller needs to decide requests.
//
//   auto limit = Limit::make({Algorithm::kTokenBucket, 100, std::chrono::seconds(60)});
//   auto store = Store::make({});
//   Decision d = (*store)->check(hashKey("", "user:42", *limit), *limit, 1, clock.now());
//
// Pure: no sockets, no threads of its own, time only from the caller. See docs/algorithms.md for
// the exact semantics of every algorithm and docs/architecture.md for the store's design.
#pragma once

#include "limiter/clock.h"
#include "limiter/decision.h"
#include "limiter/key.h"
#include "limiter/limit.h"
#include "limiter/period.h"
#include "limiter/result.h"
#include "limiter/state.h"
#include "limiter/store.h"

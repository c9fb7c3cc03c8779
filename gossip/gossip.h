// ThrottleX membership: SWIM + Lifeguard over an injected transport and time.
//
// The public surface: Membership (membership.h) driven by tick()/receive(), its Options and the
// Timing presets (timing.h), the Transport interface (transport.h), Member/Event (member.h).
// sim_network.h is the in-memory Transport for tests; codec.h is the wire format.
#pragma once

#include "gossip/member.h"
#include "gossip/membership.h"
#include "gossip/timing.h"
#include "gossip/transport.h"

#include <doctest/doctest.h>

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "limiter/key.h"

using namespace throttlex;
using namespace std::chrono_literals;

TEST_CASE("the same inputs give the same key hash") {
  CHECK(hashKey("api", "user:1", Algorithm::kTokenBucket, 1s) ==
        hashKey("api", "user:1", Algorithm::kTokenBucket, 1s));
}

TEST_CASE("namespace, key, algorithm and period each change the identity") {
  const KeyHash base = hashKey("api", "user:1", Algorithm::kTokenBucket, 1s);
  CHECK_FALSE(base == hashKey("web", "user:1", Algorithm::kTokenBucket, 1s));
  CHECK_FALSE(base == hashKey("api", "user:2", Algorithm::kTokenBucket, 1s));
  CHECK_FALSE(base == hashKey("api", "user:1", Algorithm::kGcra, 1s));
  CHECK_FALSE(base == hashKey("api", "user:1", Algorithm::kTokenBucket, 2s));
  // Field boundaries matter: ("ab", "c") is not ("a", "bc").
  CHECK_FALSE(hashKey("ab", "c", Algorithm::kTokenBucket, 1s) ==
              hashKey("a", "bc", Algorithm::kTokenBucket, 1s));
}

TEST_CASE("long keys hash by their whole content") {
  const std::string a(5000, 'x');
  std::string b = a;
  b.back() = 'y';
  CHECK_FALSE(hashKey("", a, Algorithm::kTokenBucket, 1s) ==
              hashKey("", b, Algorithm::kTokenBucket, 1s));
  CHECK(hashKey("", a, Algorithm::kTokenBucket, 1s) == hashKey("", a, Algorithm::kTokenBucket, 1s));
}

TEST_CASE("a million distinct keys give a million distinct hashes spread over all slots") {
  std::set<std::pair<std::uint64_t, std::uint64_t>> seen;
  std::vector<int> per_slot(kSlotCount);
  for (int i = 0; i < 1'000'000; ++i) {
    const KeyHash k = hashKey("", "key:" + std::to_string(i), Algorithm::kTokenBucket, 1s);
    CHECK_FALSE((k.hi == 0 && k.lo == 0));
    seen.insert({k.hi, k.lo});
    ++per_slot[slotOf(k)];
  }
  CHECK(seen.size() == 1'000'000);
  // ~244 per slot; a uniform hash stays well within +-40%.
  for (int n : per_slot) {
    CHECK(n > 146);
    CHECK(n < 342);
  }
}

TEST_CASE("a key's slot depends on its namespace and key only, not on its limit") {
  // Clients route by (rule name, key) without knowing the rule's algorithm or period.
  for (int i = 0; i < 1000; ++i) {
    const std::string key = "user:" + std::to_string(i);
    const std::uint32_t slot = slotOf("api", key);
    CHECK(slot < kSlotCount);
    CHECK(slotOf(hashKey("api", key, Algorithm::kTokenBucket, 1s)) == slot);
    CHECK(slotOf(hashKey("api", key, Algorithm::kSlidingWindow, 60s)) == slot);
    CHECK(slotOf(hashKey("api", key, Algorithm::kGcra, 3600s)) == slot);
  }
  // The namespace is part of the slot (length-prefixed like the key hash).
  int differ = 0;
  for (int i = 0; i < 1000; ++i) {
    const std::string key = "user:" + std::to_string(i);
    if (slotOf("api", key) != slotOf("web", key)) ++differ;
  }
  CHECK(differ > 950);
  // Long keys take the streaming path and agree with the hash's slot too.
  const std::string long_key(2000, 'x');
  CHECK(slotOf(hashKey("ns", long_key, Algorithm::kFixedWindow, 1s)) == slotOf("ns", long_key));
}

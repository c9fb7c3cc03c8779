#include <doctest/doctest.h>

#include "limiter/period.h"

using namespace throttlex;
using namespace std::chrono_literals;

TEST_CASE("periods parse in every unit") {
  CHECK(*parsePeriod("250ms") == 250ms);
  CHECK(*parsePeriod("1s") == 1s);
  CHECK(*parsePeriod("60s") == 60s);
  CHECK(*parsePeriod("5m") == 5min);
  CHECK(*parsePeriod("2h") == 2h);
  CHECK(*parsePeriod("365d") == std::chrono::hours(24 * 365));
  CHECK(*parsePeriod("1500") == 1500ms);  // bare numbers are milliseconds
}

TEST_CASE("bad periods are rejected with the accepted form in the message") {
  for (const char* bad : {"", "s", "-1s", "0s", "1.5s", "1 s", "1sec", "1w", "99999999999999s"}) {
    CAPTURE(bad);
    auto p = parsePeriod(bad);
    REQUIRE_FALSE(p.ok());
    CHECK(p.error().message.find("ms, s, m, h or d") != std::string::npos);
  }
}

TEST_CASE("huge periods are rejected instead of wrapping around") {
  for (const char* huge : {"999999999999d", "80063993376h", "999999999999m"}) {
    CAPTURE(huge);
    auto p = parsePeriod(huge);
    REQUIRE_FALSE(p.ok());
    CHECK(p.error().message.find("too long") != std::string::npos);
  }
  CHECK(parsePeriod("365d").ok());
  CHECK(parsePeriod("12000d").ok());  // parses; Limit::make then rejects it as above 365d
}

TEST_CASE("formatting picks the largest exact unit") {
  CHECK(formatPeriod(60s) == "1m");
  CHECK(formatPeriod(1500ms) == "1500ms");
  CHECK(formatPeriod(90s) == "90s");
  CHECK(formatPeriod(std::chrono::hours(48)) == "2d");
  CHECK(*parsePeriod(formatPeriod(86'399'999ms)) == 86'399'999ms);
}

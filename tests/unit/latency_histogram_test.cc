// throttlex-bench's histogram and key distributions (bench/latency_histogram.h, key_picker.h).
#include <doctest/doctest.h>

#include <vector>

#include "bench/key_picker.h"
#include "bench/latency_histogram.h"

using throttlex::bench::Distribution;
using throttlex::bench::KeyPicker;
using throttlex::bench::LatencyHistogram;

TEST_CASE("bucket indexes are contiguous and every value lies within 1/64 of its bucket's top") {
  std::size_t previous = 0;
  for (std::uint64_t v = 1; v < (std::uint64_t{1} << 40);
       v += 1 + v / 200) {  // steps below the narrowest bucket (v/128)
    const std::size_t i = LatencyHistogram::indexOf(v);
    CAPTURE(v);
    REQUIRE(i < LatencyHistogram::kBucketCount);
    CHECK((i == previous || i == previous + 1));
    CHECK(LatencyHistogram::highestIn(i) >= v);
    CHECK(static_cast<double>(LatencyHistogram::highestIn(i) - v) <= static_cast<double>(v) / 64);
    previous = i;
  }
  CHECK(LatencyHistogram::indexOf(~std::uint64_t{0}) == LatencyHistogram::kBucketCount - 1);
  CHECK(LatencyHistogram::indexOf(0) == 0);
}

TEST_CASE("quantiles of 1..10000 us are within the bucket error, max is exact") {
  auto h = std::make_unique<LatencyHistogram>();
  for (std::uint64_t us = 1; us <= 10'000; ++us) h->record(us * 1000);
  CHECK(h->count() == 10'000);
  CHECK(h->max() == 10'000'000);
  CHECK(h->quantile(0.5) == doctest::Approx(5'000'000).epsilon(1.0 / 64));
  CHECK(h->quantile(0.99) == doctest::Approx(9'900'000).epsilon(1.0 / 64));
  CHECK(h->quantile(1.0) == 10'000'000);
  CHECK(h->mean() == doctest::Approx(5'000'500));
}

TEST_CASE("merging adds counts and keeps the larger max; an empty histogram reports 0") {
  auto a = std::make_unique<LatencyHistogram>();
  auto b = std::make_unique<LatencyHistogram>();
  CHECK(a->quantile(0.99) == 0);
  a->record(100);
  b->record(1'000'000);
  b->record(1'000'000);
  a->merge(*b);
  CHECK(a->count() == 3);
  CHECK(a->max() == 1'000'000);
  CHECK(a->quantile(0.3) == 100);
}

TEST_CASE("key pickers stay in range; hot sends about 90% to the first 1% of keys") {
  auto zipf = throttlex::bench::makeZipfTable(1000, 1.1);
  for (Distribution d : {Distribution::kUniform, Distribution::kZipf, Distribution::kHot}) {
    KeyPicker picker(d, 1000, zipf, 42);
    std::vector<int> hits(1000);
    for (int i = 0; i < 100'000; ++i) {
      const std::uint64_t k = picker.next();
      REQUIRE(k < 1000);
      ++hits[k];
    }
    int first_ten = 0;
    for (int i = 0; i < 10; ++i) first_ten += hits[static_cast<std::size_t>(i)];
    if (d == Distribution::kHot) CHECK(first_ten == doctest::Approx(90'000).epsilon(0.02));
    if (d == Distribution::kUniform) CHECK(first_ten == doctest::Approx(1'000).epsilon(0.2));
    if (d == Distribution::kZipf) CHECK(hits[0] > hits[1]);
  }
}

// A small driver for the fuzz targets where libFuzzer is not linked (GCC builds, the ASan+UBSan
// stage of scripts/test.sh): runs every file of the corpus directories given as arguments, then
// THROTTLEX_FUZZ_MUTATIONS (default 20000) inputs mutated from them — bytes flipped, inserted,
// erased, copied within an input, spliced from two — with a fixed seed, so a run is repeatable.
// It finds what the sanitizers see on inputs near the corpus; scripts/fuzz.sh runs libFuzzer's
// coverage-guided search for long.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

using Input = std::vector<std::uint8_t>;

std::vector<Input> readCorpus(int argc, char** argv) {
  std::vector<Input> corpus;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path root(argv[i]);
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(root)) {
      for (const auto& e : std::filesystem::directory_iterator(root)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else {
      files.push_back(root);
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
  }
  if (corpus.empty()) corpus.emplace_back();
  return corpus;
}

Input mutate(const std::vector<Input>& corpus, std::mt19937_64& rng) {
  auto pick = [&](std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(rng() % n); };
  Input in = corpus[pick(corpus.size())];
  const int edits = 1 + static_cast<int>(pick(8));
  for (int e = 0; e < edits; ++e) {
    switch (pick(6)) {
      case 0:  // flip a bit
        if (!in.empty()) in[pick(in.size())] ^= static_cast<std::uint8_t>(1u << pick(8));
        break;
      case 1:  // set a byte to an edge value
        if (!in.empty()) {
          static constexpr std::uint8_t kEdges[] = {0, 1, 0x7f, 0x80, 0xff, '{', '"', '\n', ':'};
          in[pick(in.size())] = kEdges[pick(sizeof kEdges)];
        }
        break;
      case 2:  // insert random bytes
        in.insert(in.begin() + static_cast<std::ptrdiff_t>(pick(in.size() + 1)), 1 + pick(16),
                  static_cast<std::uint8_t>(rng()));
        break;
      case 3:  // erase a run
        if (!in.empty()) {
          const std::size_t at = pick(in.size());
          const std::size_t n = std::min(in.size() - at, 1 + pick(16));
          in.erase(in.begin() + static_cast<std::ptrdiff_t>(at),
                   in.begin() + static_cast<std::ptrdiff_t>(at + n));
        }
        break;
      case 4:  // duplicate a run (lengths and nesting grow)
        if (!in.empty()) {
          const std::size_t at = pick(in.size());
          const std::size_t n = std::min(in.size() - at, 1 + pick(64));
          const Input run(in.begin() + static_cast<std::ptrdiff_t>(at),
                          in.begin() + static_cast<std::ptrdiff_t>(at + n));
          in.insert(in.begin() + static_cast<std::ptrdiff_t>(pick(in.size() + 1)), run.begin(),
                    run.end());
        }
        break;
      default: {  // splice with another input
        const Input& other = corpus[pick(corpus.size())];
        const std::size_t cut = pick(in.size() + 1);
        const std::size_t from = pick(other.size() + 1);
        in.resize(cut);
        in.insert(in.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
        break;
      }
    }
  }
  return in;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<Input> corpus = readCorpus(argc, argv);
  const char* env = std::getenv("THROTTLEX_FUZZ_MUTATIONS");
  const long mutations = env != nullptr ? std::strtol(env, nullptr, 10) : 20000;
  for (const Input& in : corpus) LLVMFuzzerTestOneInput(in.data(), in.size());
  std::mt19937_64 rng(1);
  for (long i = 0; i < mutations; ++i) {
    const Input in = mutate(corpus, rng);
    LLVMFuzzerTestOneInput(in.data(), in.size());
  }
  std::printf("%s: %zu corpus inputs and %ld mutations, no failure\n", argv[0], corpus.size(),
              mutations);
  return 0;
}

// When the CPU kernels stream their stores (why: stream_store.h). Compiled once.
#include "stream_store.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <unistd.h>
#endif

namespace gcrepro {
namespace {

// "32768K" / "1M" (sysfs cache size) -> bytes; 0 if unreadable.
int64_t parse_size(const std::string& text) {
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (v <= 0) return 0;
  const char unit = *end;
  return unit == 'K' ? v << 10 : unit == 'M' ? v << 20 : unit == 'G' ? v << 30 : v;
}

int64_t read_last_level_cache_bytes() {
  // sysfs reports the cache this CPU has; glibc's sysconf can be far off in a VM (320 MiB for
  // the 32 MiB L3 of the development VM).
  int64_t best_level = 0, bytes = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int64_t level = 0;
    std::string size;
    if (!(level_file >> level) || !(size_file >> size)) continue;
    const int64_t b = parse_size(size);
    if (level > best_level && b > 0) best_level = level, bytes = b;
  }
#if defined(__linux__) && defined(_SC_LEVEL3_CACHE_SIZE)
  if (bytes == 0) bytes = std::max<long>(sysconf(_SC_LEVEL3_CACHE_SIZE), 0);
#endif
  return bytes > 0 ? bytes : int64_t(32) << 20;
}

enum class Mode { automatic, always, never };

Mode read_mode() {
  const char* env = std::getenv("GCREPRO_CPU_STREAM");
  if (env == nullptr || *env == '\0' || std::string(env) == "auto") return Mode::automatic;
  if (std::string(env) == "always") return Mode::always;
  if (std::string(env) == "never") return Mode::never;
  TORCH_CHECK(false, "gcrepro: GCREPRO_CPU_STREAM must be auto, always or never, got '", env, "'");
  return Mode::automatic;
}

}  // namespace

int64_t last_level_cache_bytes() {
  static const int64_t bytes = read_last_level_cache_bytes();
  return bytes;
}

bool stream_stores(int64_t bytes) {
#if defined(GCREPRO_HAVE_STREAM_STORES)
  static const Mode mode = read_mode();
  if (mode != Mode::automatic) return mode == Mode::always;
  return bytes > last_level_cache_bytes() / 2;
#else
  (void)bytes;
  return false;
#endif
}

}  // namespace gcrepro

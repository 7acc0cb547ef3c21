// gtest entry point shared by the test binaries: quiet logging unless SHOAL_LOG is set.
#include <gtest/gtest.h>

#include <cstdlib>

#include "base/log.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  const char* level = std::getenv("SHOAL_LOG");
  shoal::log::set_level(level ? level : "warn");
  return RUN_ALL_TESTS();
}

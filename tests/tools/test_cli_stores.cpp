// The notifications command, run as a program (tools/cli).
#include <gtest/gtest.h>

#!/usr/bin/env bash
# Builds the order_service sample (Release, in build/release) and runs it. Arguments are passed to
# the sample, e.g. scripts/run-sample.sh --verbose
#
# The sample reads NOTIFICATIONS_URL (default memory://) and the other NOTIFICATIONS_* variables,
# e.g. NOTIFICATIONS_URL=memory:// scripts/run-sample.sh. Its exit status is non-zero when the
# events received through the transport do not add up to what the program did. order_analytics,
# the receiving side as a process of its own (for networked transports), is built alongside:
# build/release/samples/order_service/order_analytics --help
#
# Works from a fresh clone on Debian 12: installs missing packages first (as root, or through
# sudo). Re-running is quick: configuring an existing build/release and rebuilding an up-to-date
# target do next to nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release
cmake --build build/release --target order_service order_analytics -j2
exec build/release/samples/order_service/order_service "$@"

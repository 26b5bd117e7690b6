#!/usr/bin/env bash
# Installs the Debian packages the project builds, tests and benchmarks with.
# Idempotent: installs only what is missing, and does nothing (no apt-get update)
# when everything is already there. Needs root (or sudo) only when something is missing.
#
# Usage: scripts/install-deps.sh [--with-interop] [--with-browser]
#   --with-interop  also Node.js and the nats.js interop test's node packages (scripts/test.sh
#                   asks for them; builds, benchmarks and samples do not need them)
#   --with-browser  also Chromium and chromedriver, for the browser test of `notifications serve`'s
#                   page (tests/browser/; scripts/test.sh asks for them)
set -euo pipefail

with_interop=false
with_browser=false
for arg in "$@"; do
  case "$arg" in
    --with-interop) with_interop=true ;;
    --with-browser) with_browser=true ;;
    *) echo "install-deps: unknown argument '$arg' (expected --with-interop or --with-browser)" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake pkg-config
  libboost-dev            # Boost.Signals2 (header-only)
  nlohmann-json3-dev
  libspdlog-dev
  libsqlite3-dev
  libnats-dev
  nats-server
  libgtest-dev libgmock-dev
  libbenchmark-dev
  libsimdjson-dev         # bench_envelope_decode only: simdjson's parsers measured against the envelope decoder
  libcli11-dev            # the notifications command's command line (tools/cli)
  prometheus-cpp-dev      # notifications::prometheus: metrics and their HTTP exposer
  libcivetweb-dev         # notifications::prometheus: its /metrics and /health server (civetweb, as prometheus-cpp's exposer)
  clang libclang-rt-14-dev  # the fuzz, ASan and TSan builds (TSan with -Wthread-safety); libFuzzer and sanitizer runtimes
  python3 python3-jsonschema  # validates real envelopes against docs/envelope.schema.json
  openssl                 # certificates for the TLS tests against nats-server
)
# The nats.js interop test runs under Node.js: the machine's own when it has one, else Debian's.
if $with_interop && { ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; }; then
  packages+=(nodejs npm)
fi
# The browser test (tests/browser/test_event_page.py) drives Debian's headless Chromium.
if $with_browser; then
  packages+=(chromium chromium-driver)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -ne 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The interop test's node packages (nats.js, ajv), from tests/transports/nats/interop/package-lock.json.
if $with_interop; then
  bash "$(dirname "${BASH_SOURCE[0]}")/../tests/transports/nats/interop/install.sh"
fi

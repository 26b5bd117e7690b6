#!/usr/bin/env bash
# Installs the node packages of the nats.js interop peer (tests/transports/nats/interop/node_modules) from
# package-lock.json. Idempotent: does nothing, silently, when node_modules is newer than
# package-lock.json; otherwise runs `npm ci`. Fails with a message naming what is missing when
# node or npm are not installed (Debian: apt-get install nodejs npm).
#
# Called by scripts/install-deps.sh --with-interop (scripts/test.sh); safe to run by hand from any directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

fail() {
  echo "tests/transports/nats/interop/install.sh: $*" >&2
  exit 1
}

command -v node >/dev/null 2>&1 ||
  fail "node not found on PATH; the nats.js interop test needs Node.js 18 or later (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 ||
  fail "npm not found on PATH; it installs the interop test's packages (Debian: apt-get install npm)"

node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if ! [[ "$node_major" =~ ^[0-9]+$ ]] || ((node_major < 18)); then
  fail "node $(node --version 2>/dev/null || echo '?') is too old; the interop peer needs Node.js 18 or later"
fi

[[ -f package-lock.json ]] || fail "package-lock.json is missing in $here (run npm install there once and commit it)"

# npm writes node_modules/.package-lock.json on every install; it is the stamp of the last one.
stamp="node_modules/.package-lock.json"
if [[ -f "$stamp" && -d node_modules/nats && -d node_modules/ajv && "$stamp" -nt package-lock.json ]]; then
  exit 0
fi

echo "tests/transports/nats/interop: installing node packages (npm ci)"
if ! npm ci --no-audit --no-fund --loglevel=error; then
  fail "npm ci failed in $here (is the npm registry reachable? does package-lock.json match package.json?)"
fi
[[ -d node_modules/nats && -d node_modules/ajv ]] ||
  fail "npm ci finished but node_modules/nats or node_modules/ajv is missing in $here"
# Same-second timestamps would make the next run install again: mark this install as newer.
touch "$stamp"

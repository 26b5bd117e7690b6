#!/usr/bin/env bash
# The order-service sample as two processes over NATS, on loopback: starts nats-server on a free
# 127.0.0.1 port, starts order_analytics (the receiving service), runs order_service (the
# instrumented program) with the same NOTIFICATIONS_URL, then stops analytics (SIGTERM, it prints
# its tally) and the server, each by PID. Arguments go to order_service.
#
# By hand it is the same three steps:
#   nats-server -a 127.0.0.1 -p 4222 &
#   NOTIFICATIONS_URL=nats://127.0.0.1:4222 build/release/samples/order_service/order_analytics &
#   NOTIFICATIONS_URL=nats://127.0.0.1:4222 build/release/samples/order_service/order_service
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release --target order_service order_analytics -j2 >/dev/null

server_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export NOTIFICATIONS_URL="nats://127.0.0.1:$port"

server=""
analytics=""
cleanup() {
  [ -n "$analytics" ] && kill -TERM "$analytics" 2>/dev/null && wait "$analytics" 2>/dev/null || true
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
}
trap cleanup EXIT

"$server_bin" -a 127.0.0.1 -p "$port" >build/sample-nats-server.log 2>&1 &
server=$!
for _ in $(seq 1 100); do  # up to 10 s
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
echo "run-sample-nats: nats-server (pid $server) on $NOTIFICATIONS_URL"

build/release/samples/order_service/order_analytics --seconds 120 &
analytics=$!
sleep 1  # core NATS keeps nothing for late subscribers: let analytics subscribe first

status=0
build/release/samples/order_service/order_service "$@" || status=$?
sleep 0.5  # let the last events reach analytics before it prints its tally
kill -TERM "$analytics"
wait "$analytics" || true
analytics=""
exit "$status"

#!/usr/bin/env bash
# Builds the order_service sample (Release, in build/release) and runs it as two processes that
# share nothing but one SQLite file: no server, no broker.
#
#   1. order_analytics (the analytics service) starts as a member of the consumer group
#      "analytics" on sqlite://<temp dir>/events.db: the group's position is stored in the file.
#   2. order_service places its 200 orders, paced (--delay-ms 40, about 2 s), publishing every
#      event into the file.
#   3. In the middle, order_analytics is killed with SIGKILL (nothing of it runs at exit), and
#      started again half a second later, while order_service goes on. The new one resumes the
#      group where the dead one stopped acknowledging, gets what was published while none ran,
#      and goes on from the tally the dead one kept in a file (--tally; an event redelivered after
#      the kill is not counted twice).
#   4. order_analytics stops once it has counted the 200 orders; its totals must equal what
#      order_service says it did. Exit status 0 when they match, 1 when not (or when a step
#      failed or timed out).
# Arguments go to order_service, e.g. scripts/run-sample.sh --verbose. The temp directory (the
# database, the logs, the tally) is removed at the end; every wait is bounded.
#
# The single-process sample, as before: set NOTIFICATIONS_URL (or NOTIFICATIONS_CONFIG), e.g.
#   NOTIFICATIONS_URL=memory:// scripts/run-sample.sh
# runs order_service alone with that transport (with memory:// it runs analytics in the same
# process and checks its tally itself; its exit status is non-zero when the events received
# through the transport do not add up to what the program did). scripts/run-sample-nats.sh is
# the two-process version over NATS. By hand, the two processes here are:
#   NOTIFICATIONS_URL=sqlite:///tmp/events.db build/release/samples/order_service/order_analytics --group analytics &
#   NOTIFICATIONS_URL=sqlite:///tmp/events.db build/release/samples/order_service/order_service
#
# Works from a fresh clone on Debian 12: installs missing packages first (as root, or through
# sudo). Re-running is quick: configuring an existing build/release and rebuilding an up-to-date
# target do next to nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release
cmake --build build/release --target order_service order_analytics -j2
bin=build/release/samples/order_service

if [ -n "${NOTIFICATIONS_URL:-}" ] || [ -n "${NOTIFICATIONS_CONFIG:-}" ]; then
  exec "$bin/order_service" "$@"
fi

orders=200    # order_service places 4 x 50 orders (samples/order_service/main.cpp)
delay_ms=40   # order_service --delay-ms: its run takes about 50 x 40 ms
kill_after=100  # tally lines (events counted) before the kill: about a quarter of the run's

dir=$(mktemp -d "${TMPDIR:-/tmp}/run-sample.XXXXXX")
export NOTIFICATIONS_URL="sqlite://$dir/events.db"
tally="$dir/analytics.tally"
listener=""
service=""
cleanup() {
  # Only the processes this script started, by PID.
  if [ -n "$listener" ]; then kill -KILL "$listener" 2>/dev/null || true; wait "$listener" 2>/dev/null || true; fi
  if [ -n "$service" ]; then kill -KILL "$service" 2>/dev/null || true; wait "$service" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

say() { echo "run-sample: $*"; }
fail() { echo "run-sample: $*" >&2; exit 1; }

# wait_until SECONDS COMMAND...: true once COMMAND succeeds (tried every 0.1 s), false after SECONDS.
wait_until() {
  local limit=$1 i
  shift
  for ((i = 0; i < limit * 10; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}
running() { kill -0 "$1" 2>/dev/null; }
lines_in() { [ -f "$1" ] && wc -l <"$1" || echo 0; }

# start_listener N: order_analytics in the background (PID in $listener), its output prefixed
# and kept in $dir/analytics-N.log; returns once it is subscribed.
start_listener() {
  local log="$dir/analytics-$1.log"
  "$bin/order_analytics" --group analytics --tally "$tally" --orders "$orders" --seconds 60 \
    > >(tee "$log" | sed -u "s/^/  analytics #$1 | /") 2>&1 &
  listener=$!
  wait_until 15 grep -qs "receiving order events" "$log" ||
    fail "order_analytics #$1 did not start within 15 s (log: $(tr '\n' ' ' <"$log" 2>/dev/null))"
}

say "one SQLite file, no server: $NOTIFICATIONS_URL"
start_listener 1
say "order_analytics #1 (pid $listener) is subscribed in consumer group \"analytics\""

"$bin/order_service" --delay-ms "$delay_ms" "$@" > >(tee "$dir/order_service.log" | sed -u "s/^/  order_service | /") 2>&1 &
service=$!
say "order_service (pid $service) is placing $orders orders, $delay_ms ms apart on each of its threads"

wait_until 30 bash -c "[ \$(cat '$tally' 2>/dev/null | wc -l) -ge $kill_after ]" ||
  fail "order_analytics #1 counted fewer than $kill_after events within 30 s"
kill -KILL "$listener"
wait "$listener" 2>/dev/null || true
counted=$(lines_in "$tally")
listener=""
running "$service" || fail "order_service had already finished when order_analytics #1 was killed"
say "killed order_analytics #1 with SIGKILL after it had counted $counted events; order_service goes on"
sleep 0.5
running "$service" || say "(order_service finished while no listener ran)"

start_listener 2
say "order_analytics #2 (pid $listener) resumed consumer group \"analytics\""

# order_service: about 2 s; analytics then stops by itself once it counted every order.
wait_until 120 bash -c "! kill -0 $service 2>/dev/null" || fail "order_service did not finish within 120 s"
service_status=0
wait "$service" || service_status=$?
service=""
wait_until 70 bash -c "! kill -0 $listener 2>/dev/null" || fail "order_analytics #2 did not stop within 70 s"
listener_status=0
wait "$listener" || listener_status=$?
listener=""
sleep 0.2  # the output filters' last lines

[ "$service_status" -eq 0 ] || fail "order_service exited with status $service_status"
[ "$listener_status" -eq 0 ] || fail "order_analytics #2 exited with status $listener_status"
expected=$(sed -n 's/.*should count: //p' "$dir/order_service.log" | tail -n 1)
reported=$(sed -n 's/.*stopped (\([^)]*\)); analytics, from remote events of [^:]*: //p' "$dir/analytics-2.log" | tail -n 1)
reason=$(sed -n 's/.*stopped (\([^)]*\)).*/\1/p' "$dir/analytics-2.log" | tail -n 1)
[ -n "$expected" ] || fail "order_service did not say what analytics should count"
[ -n "$reported" ] || fail "order_analytics #2 did not report its tally"

echo
say "order_service did:                                   $expected"
say "order_analytics counted (killed once, restarted):    $reported"
if [ "$expected" = "$reported" ] && [ "$reason" = "orders counted" ]; then
  say "the totals match: nothing lost, nothing counted twice, through one SQLite file"
  exit 0
fi
[ "$reason" = "orders counted" ] || say "order_analytics #2 stopped by: $reason"
fail "the totals DIFFER"

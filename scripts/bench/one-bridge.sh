#!/usr/bin/env bash
# Runs one bridge process against one fresh nats-server under loadgen's
# closed loop (64 connections, 10 s after 2 s warm-up), with a CPU and heap
# profile taken mid-run, and prints throughput, latency, the stream check,
# the bridge's CPU ticks and its peak RSS. Extra arguments are environment
# settings for the bridge, e.g.:
#
#   scripts/bench/one-bridge.sh GOMEMLIMIT=40MiB
#
# Profiles go to $OUT/cpu.prof and $OUT/heap.prof (go tool pprof $OUT/bridge $OUT/cpu.prof).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-${TMPDIR:-/tmp}/kreabus-one-bridge}
mkdir -p "$OUT"
go build -o "$OUT/bridge" ./cmd/bridge
go build -o "$OUT/loadgen" ./cmd/loadgen
go build -o "$OUT/nats-server" github.com/nats-io/nats-server/v2
SECRET=benchsecretbenchsecretbenchsecret00
rm -rf "$OUT/js"
"$OUT/nats-server" -a 127.0.0.1 -p 14222 -js -sd "$OUT/js" >"$OUT/nats.log" 2>&1 &
NS=$!
trap 'kill $NS $BP 2>/dev/null || true' EXIT
sleep 1
env NATS_URL=nats://127.0.0.1:14222 KREABUS_WEBHOOK_SECRET=$SECRET KREABUS_LISTEN=127.0.0.1:18080 \
	KREABUS_ADMIN_LISTEN=127.0.0.1:19090 KREABUS_PPROF=true "$@" "$OUT/bridge" >"$OUT/bridge.log" 2>&1 &
BP=$!
for _ in $(seq 50); do curl -sf 127.0.0.1:19090/readyz >/dev/null && break; sleep 0.2; done
(sleep 5; curl -s -o "$OUT/cpu.prof" "127.0.0.1:19090/debug/pprof/profile?seconds=4"; curl -s -o "$OUT/heap.prof" 127.0.0.1:19090/debug/pprof/heap) &
T0=$(awk '{print $14+$15}' /proc/$BP/stat)
"$OUT/loadgen" run -url http://127.0.0.1:18080 -nats-url nats://127.0.0.1:14222 -secret $SECRET -c 64 -d 10s -warmup 2s
T1=$(awk '{print $14+$15}' /proc/$BP/stat)
echo "bridge CPU: $((T1 - T0)) ticks of 1/$(getconf CLK_TCK) s"
grep VmHWM /proc/$BP/status

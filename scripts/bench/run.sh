#!/usr/bin/env bash
# Reproduces the bridge benchmark figures of issue 7 / BENCHMARKS.md:
#   1. kreabus vs the baseline at 64 keep-alive connections, single
#      nats-server, file storage, plus the JetStream sync-publish ceiling and
#      end-to-end latency (webhook POST -> JetStream consumer);
#   2. the same with jetstream { sync_interval: always };
#   3. the same on a 3-node JetStream cluster on loopback with R3 streams;
#   4. natscli's `nats bench js pub sync` at the same size and concurrency,
#      when natscli is on PATH (go install github.com/nats-io/natscli/nats@v0.5.0);
#   5. latency below saturation: kreabus vs the baseline at fixed rates
#      (open loop, up to $C requests in flight), one run per rate in RATES.
# Every target gets fresh nats-server processes, built from go.mod's version.
# Results (text and JSON) go to $OUT. Knobs: C, D, WARMUP, SIZE, ROUNDS,
# E2E_RATE, E2E_D, NATS_MSGS, RATES, STEPS (e.g. STEPS="1 4").
#
# Usage: scripts/bench/run.sh            (from anywhere in the repository)
set -euo pipefail

cd "$(dirname "$0")/../.."
C=${C:-64}
D=${D:-10s}
WARMUP=${WARMUP:-2s}
SIZE=${SIZE:-300}
ROUNDS=${ROUNDS:-1}
E2E_RATE=${E2E_RATE:-500}
E2E_D=${E2E_D:-10s}
NATS_MSGS=${NATS_MSGS:-100000}
RATES=${RATES:-1000 3000 6000}
STEPS=${STEPS:-1 2 3 4 5}
OUT=${OUT:-${TMPDIR:-/tmp}/kreabus-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
echo "results in $OUT"

echo "building loadgen, bridge and nats-server..."
go build -o "$OUT/loadgen" ./cmd/loadgen
go build -o "$OUT/bridge" ./cmd/bridge
go build -o "$OUT/nats-server" github.com/nats-io/nats-server/v2

common=(-c "$C" -d "$D" -warmup "$WARMUP" -size "$SIZE" -rounds "$ROUNDS"
	-bridge-bin "$OUT/bridge" -nats-bin "$OUT/nats-server")

{
	echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs, $(go version)"
	echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' + uncommitted changes')"
	grep -m1 'model name' /proc/cpuinfo || true
	uptime
} | tee "$OUT/machine.txt"

step() { [[ " $STEPS " == *" $1 "* ]]; }
# A failed stream check is reported at the end; the other steps still run.
status=0

if step 1; then
	echo "== 1. file storage, $C connections (+ ceiling, + end-to-end at $E2E_RATE/s)"
	uptime
	"$OUT/loadgen" compare "${common[@]}" -e2e-rate "$E2E_RATE" -e2e-d "$E2E_D" \
		-json-out "$OUT/1-file.json" | tee "$OUT/1-file.txt" || status=1
fi

if step 2; then
	echo "== 2. sync_interval: always"
	uptime
	"$OUT/loadgen" compare "${common[@]}" -sync always \
		-json-out "$OUT/2-sync-always.json" | tee "$OUT/2-sync-always.txt" || status=1
fi

if step 3; then
	echo "== 3. 3-node JetStream cluster, R3"
	uptime
	"$OUT/loadgen" compare "${common[@]}" -cluster 3 \
		-json-out "$OUT/3-cluster-r3.json" | tee "$OUT/3-cluster-r3.txt" || status=1
fi

if step 4; then
	if ! command -v nats >/dev/null; then
		echo "== 4. natscli not on PATH; skipped (go install github.com/nats-io/natscli/nats@v0.5.0)"
	else
		echo "== 4. natscli $(nats --version 2>&1): nats bench js pub sync, $C clients, $SIZE B"
		for mode in default always; do
			dir=$(mktemp -d "$OUT/natscli-XXXX")
			port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 14222)
			{
				echo "listen: 127.0.0.1:$port"
				echo "jetstream { store_dir: \"$dir/store\""
				[ "$mode" = always ] && echo "  sync_interval: always"
				echo "}"
			} >"$dir/nats.conf"
			"$OUT/nats-server" -c "$dir/nats.conf" >"$dir/nats.log" 2>&1 &
			pid=$!
			for _ in $(seq 50); do
				nats --server "nats://127.0.0.1:$port" account info >/dev/null 2>&1 && break
				sleep 0.2
			done
			uptime
			nats bench js pub sync kreabus.bench --server "nats://127.0.0.1:$port" --create --purge \
				--storage file --replicas 1 --clients "$C" --size "$SIZE" --msgs "$NATS_MSGS" \
				--no-progress --dedup --dedupwindow 1h >"$OUT/4-natscli-$mode.txt" 2>&1 || true
			echo "sync_interval $mode:"
			grep -E 'Starting JetStream synchronous publisher benchmark|aggregated stats|latencies per operation' "$OUT/4-natscli-$mode.txt"
			kill "$pid"
			wait "$pid" 2>/dev/null || true
			rm -rf "$dir"
		done
	fi
fi
if step 5; then
	for rate in $RATES; do
		echo "== 5. fixed rate $rate/s, up to $C in flight"
		uptime
		"$OUT/loadgen" compare "${common[@]}" -rate "$rate" -ceiling=false \
			-json-out "$OUT/5-rate-$rate.json" | tee "$OUT/5-rate-$rate.txt" || status=1
	done
fi

uptime | tee -a "$OUT/machine.txt"
echo "results in $OUT"
[ "$status" = 0 ] || echo "FAIL: a stream check failed, see above"
exit "$status"

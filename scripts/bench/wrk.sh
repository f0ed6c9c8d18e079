#!/usr/bin/env bash
# kreabus' bridge against the baseline bridge under wrk: a closed loop of 64
# keep-alive connections (wrk costs far less per request than either bridge,
# so on 2 cores it starves neither), pre-minted tokens, 300-byte completed
# bodies, one distinct job per request. Rounds interleave the two targets,
# each on a fresh nats-server (file storage). SHAPE says what the ledger
# holds when kreabus runs:
#   live    (default) production's shape: each job is recorded in the
#           ledger shortly before its webhook comes (`loadgen feed` keeps
#           LEAD jobs ahead of the furthest webhook stored, whichever wrk
#           thread sent it, one job record write each), while the bridge runs, so the bridge's cache has it; the
#           feeder runs in the baseline's rounds too, so nats-server does
#           the same extra work for both
#   ledger  the jobs were recorded before the bridge started: one ledger
#           read per webhook
#   unknown an empty ledger: every webhook reads job.<id> and req.<id>
#           (both miss), the costliest path
# Prints per round: req/s, p50, p99, non-2xx, peak RSS of the bridge; then
# the ratios kreabus / baseline of the medians.
#
#   ROUNDS=3 SHAPE=known scripts/bench/wrk.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
SHAPE=${SHAPE:-live}
LEAD=${LEAD:-2000}
BRIDGE_ENV=${BRIDGE_ENV:-} # extra settings for kreabus' bridge, e.g. KREABUS_LEDGER_CACHE=65536
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
N=${N:-400000}
OUT=${OUT:-${TMPDIR:-/tmp}/kreabus-wrk}
mkdir -p "$OUT"
if ! command -v wrk >/dev/null; then
	echo "installing wrk (Debian package)" >&2
	(apt-get install -y wrk >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y wrk >/dev/null))
fi
go build -o "$OUT/bridge" ./cmd/bridge
go build -o "$OUT/loadgen" ./cmd/loadgen
go build -o "$OUT/nats-server" github.com/nats-io/nats-server/v2
SECRET=benchsecretbenchsecretbenchsecret00
LUA=scripts/bench/wrk-webhooks.lua
NSP=24222
PORT=28080
ADMIN=29090

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_nats() {
	rm -rf "$OUT/js"
	"$OUT/nats-server" -a 127.0.0.1 -p $NSP -js -sd "$OUT/js" >"$OUT/nats.log" 2>&1 &
	NS=$!
	pids+=("$NS")
	for _ in $(seq 100); do
		(exec 3<>/dev/tcp/127.0.0.1/$NSP) 2>/dev/null && break
		sleep 0.1
	done
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

run_target() { # name round
	local name=$1 round=$2
	start_nats
	if [ "$name" = kreabus ]; then
		if [ "$SHAPE" = ledger ]; then
			"$OUT/loadgen" wrkdata -n "$N" -secret $SECRET -out "$OUT/data.txt" -known nats://127.0.0.1:$NSP
			sleep 5 # let the server finish writing the fill to disk, off the measured window
		fi
		env NATS_URL=nats://127.0.0.1:$NSP KREABUS_WEBHOOK_SECRET=$SECRET KREABUS_LISTEN=127.0.0.1:$PORT \
			KREABUS_ADMIN_LISTEN=127.0.0.1:$ADMIN $BRIDGE_ENV "$OUT/bridge" >"$OUT/bridge-$round.log" 2>&1 &
		TP=$!
		for _ in $(seq 100); do curl -sf 127.0.0.1:$ADMIN/readyz >/dev/null && break; sleep 0.1; done
	else
		env KREABUS_WEBHOOK_SECRET=$SECRET "$OUT/loadgen" baseline -listen 127.0.0.1:$PORT -nats-url nats://127.0.0.1:$NSP >"$OUT/baseline-$round.log" 2>&1 &
		TP=$!
		for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
	fi
	pids+=("$TP")
	feed() { # first line, lines per thread: record jobs from there on, LEAD ahead of the webhooks
		if [ "$SHAPE" = live ]; then
			# The feeder stands for a submitter on another machine: on 2
			# shared cores it must not fall behind the webhooks it precedes.
			nice -n -10 "$OUT/loadgen" feed -nats-url nats://127.0.0.1:$NSP -from "$1" -regions "$THREADS" -span "$2" -lead "$LEAD" >>"$OUT/feed.log" 2>&1 &
			FP=$!
			pids+=("$FP")
			sleep 1
		fi
	}
	unfeed() { if [ "$SHAPE" = live ]; then stop "$FP"; fi; }
	# Warm-up on the first lines, measure on the next ones: no job twice.
	# Each wrk thread sends its own region of the file in order (SPAN lines
	# from first + thread*SPAN): the feeder keeps LEAD jobs ahead in each.
	feed 0 $((100000 / THREADS))
	wrk -t"$THREADS" -c"$CONNS" -d2s -s $LUA "http://127.0.0.1:$PORT" -- "$OUT/data.txt" 0 $((100000 / THREADS)) >/dev/null
	unfeed
	feed 100000 $(((N - 100000) / THREADS))
	local t0 n0 t1 n1
	t0=$(awk '{print $14+$15}' /proc/$TP/stat)
	n0=$(awk '{print $14+$15}' /proc/$NS/stat)
	wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s $LUA "http://127.0.0.1:$PORT" -- "$OUT/data.txt" 100000 $(((N - 100000) / THREADS)) >"$OUT/$name-$round.txt"
	t1=$(awk '{print $14+$15}' /proc/$TP/stat)
	n1=$(awk '{print $14+$15}' /proc/$NS/stat)
	unfeed
	if [ "$name" = kreabus ]; then
		curl -s 127.0.0.1:$ADMIN/metrics | grep '^kreabus_bridge_ledger_lookups_total' >"$OUT/lookups-$round.txt" || true
	fi
	local rss
	rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$TP/status)
	local rps p50 p99 non2xx
	rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$name-$round.txt")
	p50=$(awk '$1=="50%" {print $2}' "$OUT/$name-$round.txt")
	p99=$(awk '$1=="99%" {print $2}' "$OUT/$name-$round.txt")
	non2xx=$(awk '/Non-2xx/ {print $NF}' "$OUT/$name-$round.txt")
	local reqs cpu ncpu
	reqs=$(awk '/requests in/ {print $1}' "$OUT/$name-$round.txt")
	cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f", (b-a)/hz*1e6/n}')
	ncpu=$(awk -v a="$n0" -v b="$n1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f", (b-a)/hz*1e6/n}')
	printf "| %s | %s | %s | %s | %s | %s | %s MiB | %s µs | %s µs |\n" "$round" "$name" "$rps" "$p50" "$p99" "${non2xx:-0}" "$rss" "$cpu" "$ncpu"
	echo "$name $rps $p50 $p99 $rss" >>"$OUT/summary.txt"
	if [ "$name" = kreabus ]; then
		awk '{gsub(/.*source="/, "", $1); gsub(/".*/, "", $1); printf "%s%s %s", sep, $1, $2; sep=", "} END {print ""}' "$OUT/lookups-$round.txt" | sed 's/^/  lookups (whole run): /'
	fi
	stop "$TP"
	stop "$NS"
}

"$OUT/loadgen" wrkdata -n "$N" -secret $SECRET -out "$OUT/data.txt"
: >"$OUT/summary.txt"
echo "wrk $(wrk --version 2>&1 | head -1 | awk '{print $2}'), -t$THREADS -c$CONNS -d$DURATION, shape $SHAPE, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| round | target | req/s | p50 | p99 | non-2xx | peak RSS | bridge CPU/req | nats CPU/req |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then order="kreabus baseline"; else order="baseline kreabus"; fi
	for t in $order; do run_target "$t" "$r"; done
done
# Medians and ratios (latencies in ms; wrk prints us/ms/s units).
awk '
function ms(v) { if (v ~ /us$/) return (v+0)/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return (v+0)*1000; return v+0 }
{ n[$1]++; rps[$1, n[$1]] = $2; p50[$1, n[$1]] = ms($3); p99[$1, n[$1]] = ms($4); rss[$1, n[$1]] = $5 }
function median(a, t, k,   i, j, v, tmp, m) { m = n[t]; for (i = 1; i <= m; i++) v[i] = a[t, i]
	for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { tmp = v[i]; v[i] = v[j]; v[j] = tmp }
	return v[int((m + 1) / 2)] }
END {
	for (t in n) printf "%s median: %.0f req/s, p50 %.2f ms, p99 %.2f ms, peak RSS %.1f MiB\n", t, median(rps, t), median(p50, t), median(p99, t), median(rss, t)
	printf "kreabus / baseline: throughput x%.2f, p99 x%.2f\n", median(rps, "kreabus") / median(rps, "baseline"), median(p99, "kreabus") / median(p99, "baseline")
}' "$OUT/summary.txt"

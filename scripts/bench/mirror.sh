#!/usr/bin/env bash
# Mirror throughput (issue 14): for result files of each size in SIZES, the
# median time over REPS runs of
#   http    a plain HTTP download of the file (curl to /dev/null);
#   put     `nats object put` of the same file (read from tmpfs) into a
#           file-storage Object Store bucket;
#   mirror  the mirror copying it: from publishing a krea.jobs.completed
#           event naming the file's URL to reading its krea.jobs.mirrored
#           event from the stream (download, store in KREA_RESULTS, publish).
# Each is a process start plus the transfer (curl; nats; nats pub and nats
# sub), on
# loopback against one nats-server process (file storage) and the Krea
# simulator (cmd/kreasim) serving the file. The script prints MB/s and the
# ratio of the mirror's throughput to the slower of http and put.
#
# Usage: scripts/bench/mirror.sh     (SIZES in MiB, default "1 100"; REPS
# per size, default "20 5")
set -euo pipefail

cd "$(dirname "$0")/../.."
SIZES=(${SIZES:-1 100})
REPS=(${REPS:-20 5})
OUT=${OUT:-${TMPDIR:-/tmp}/kreabus-mirror-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
SHM=${SHM:-/dev/shm}
[ -d "$SHM" ] || SHM=$OUT
echo "results in $OUT"

if ! command -v nats >/dev/null; then
	echo "installing natscli v0.5.0..."
	go install github.com/nats-io/natscli/nats@v0.5.0
	PATH=$PATH:$(go env GOPATH)/bin
fi
echo "building mirror, kreasim and nats-server..."
go build -o "$OUT/mirror" ./cmd/mirror
go build -o "$OUT/kreasim" ./cmd/kreasim
go build -o "$OUT/nats-server" github.com/nats-io/nats-server/v2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

NPORT=$(free_port)
NATS=nats://127.0.0.1:$NPORT
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -f "$SHM"/kreabus-bench-*.bin; }
trap cleanup EXIT

"$OUT/nats-server" -a 127.0.0.1 -p "$NPORT" -js -sd "$OUT/js" >"$OUT/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do nats --server "$NATS" account info >/dev/null 2>&1 && break; sleep 0.1; done

# One mirror for every size, with the defaults but for the simulator's
# loopback address.
NATS_URL=$NATS KREABUS_RESULTS_ALLOW_HOSTS=127.0.0.1 KREABUS_RESULTS_ALLOW_PRIVATE=true KREABUS_ADMIN_LISTEN= \
	KREABUS_LOG_LEVEL=warn "$OUT/mirror" >"$OUT/mirror.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do nats --server "$NATS" consumer info KREA_JOBS kreabus-mirror >/dev/null 2>&1 && break; sleep 0.1; done

printf '\n%8s %5s %9s %9s %11s %11s %8s %8s\n' "size" "reps" "http MB/s" "put MB/s" "mirror e2e" "mirror js" "ratio" "ratio js"
for i in "${!SIZES[@]}"; do
	mib=${SIZES[$i]}
	reps=${REPS[$i]:-5}
	bytes=$((mib << 20))
	SPORT=$(free_port)
	SIM=http://127.0.0.1:$SPORT
	"$OUT/kreasim" -listen "127.0.0.1:$SPORT" -token bench -queue-time -1ns -run-time -1ns -result-size "$bytes" >"$OUT/kreasim-$mib.log" 2>&1 &
	simpid=$!
	pids+=($simpid)
	for _ in $(seq 100); do curl -fsS -o /dev/null -H 'Authorization: Bearer bench' "$SIM/jobs" 2>/dev/null && break; sleep 0.1; done

	# One video job; its result URL is the file every method moves.
	job=$(curl -fsS -H 'Authorization: Bearer bench' -H 'Content-Type: application/json' \
		-d '{"prompt":"bench"}' "$SIM/generate/video/kling/kling-2.1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
	for _ in $(seq 100); do
		body=$(curl -fsS -H 'Authorization: Bearer bench' "$SIM/jobs/$job")
		case $body in *'"completed"'*) break ;; esac
		sleep 0.05
	done
	url=$(printf '%s' "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["urls"][0])')
	file=$SHM/kreabus-bench-$mib.bin
	curl -fsS -o "$file" "$url"

	nats --server "$NATS" object add "BENCH_PUT_$mib" --storage file --replicas 1 >/dev/null

	: >"$OUT/http-$mib.ns"; : >"$OUT/put-$mib.ns"; : >"$OUT/mirror-$mib.ns"; : >"$OUT/mirror-js-$mib.ns"
	for r in $(seq "$reps"); do
		t0=$(now_ns); curl -fsS -o /dev/null "$url"; t1=$(now_ns)
		echo $((t1 - t0)) >>"$OUT/http-$mib.ns"

		t0=$(now_ns); nats --server "$NATS" object put "BENCH_PUT_$mib" "$file" --name "obj-$r" --force --no-progress >/dev/null; t1=$(now_ns)
		echo $((t1 - t0)) >>"$OUT/put-$mib.ns"

		id=$(python3 -c 'import uuid; print(uuid.uuid4())')
		ev="{\"job_id\":\"$id\",\"status\":\"completed\",\"result\":{\"urls\":[\"$url\"]}}"
		# Read the mirrored event from the stream, from the first sequence
		# after the completed event: nothing is missed, whatever the timing.
		next=$(nats --server "$NATS" stream info KREA_JOBS --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"]["last_seq"] + 2)')
		t0=$(now_ns)
		nats --server "$NATS" pub krea.jobs.completed -H "Nats-Msg-Id:$id" -H "Krea-Job-Id:$id" "$ev" >/dev/null 2>&1
		timeout 60 nats --server "$NATS" sub "krea.jobs.mirrored" --stream KREA_JOBS --start-sequence "$next" --count 1 --raw >"$OUT/mirrored-$mib-$r.json" 2>/dev/null
		t1=$(now_ns)
		grep -q "\"size\":$bytes" "$OUT/mirrored-$mib-$r.json" || { echo "mirror did not store $bytes bytes:" >&2; cat "$OUT/mirrored-$mib-$r.json" >&2; exit 1; }
		echo $((t1 - t0)) >>"$OUT/mirror-$mib.ns"
		# The mirror's own time: from the completed event's storage to the
		# mirrored event's, by the stream's timestamps (no CLI in it).
		c=$(nats --server "$NATS" stream get KREA_JOBS $((next - 1)) --json)
		m=$(nats --server "$NATS" stream get KREA_JOBS --last-for krea.jobs.mirrored --json)
		python3 - "$c" "$m" >>"$OUT/mirror-js-$mib.ns" <<'PY'
import json, sys
from datetime import datetime
def ns(t):  # RFC 3339 with nanoseconds
    base, frac = t.rstrip("Z").split(".") if "." in t else (t.rstrip("Z"), "0")
    return int(datetime.fromisoformat(base + "+00:00").timestamp()) * 10**9 + int(frac.ljust(9, "0")[:9])
print(ns(json.loads(sys.argv[2])["time"]) - ns(json.loads(sys.argv[1])["time"]))
PY
	done
	kill "$simpid" 2>/dev/null || true

	h=$(median <"$OUT/http-$mib.ns"); p=$(median <"$OUT/put-$mib.ns"); m=$(median <"$OUT/mirror-$mib.ns")
	mj=$(median <"$OUT/mirror-js-$mib.ns")
	python3 - "$mib" "$reps" "$bytes" "$h" "$p" "$m" "$mj" <<'EOF' | tee -a "$OUT/summary.txt"
import sys
mib, reps, size, h, p, m, mj = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
mbs = lambda ns: size / 1e6 / (ns / 1e9)
slower = min(mbs(h), mbs(p))
print(f"{mib + ' MiB':>8} {reps:>5} {mbs(h):9.0f} {mbs(p):9.0f} {mbs(m):11.0f} {mbs(mj):11.0f} {mbs(m) / slower:8.2f} {mbs(mj) / slower:8.2f}"
      f"   (medians, ms: http {h/1e6:.1f}, put {p/1e6:.1f}, mirror {m/1e6:.1f} end to end, {mj/1e6:.1f} in the stream)")
EOF
	rm -f "$file"
done

// Command loadgen benchmarks kreabus' webhook bridge.
//
//	loadgen [run]   drive a running bridge, then check the stream
//	loadgen compare baseline vs kreabus on fresh nats-servers, plus the
//	                JetStream publish ceiling and end-to-end latency
//	loadgen e2e     end-to-end latency, webhook POST to consumer
//	loadgen ceiling JetStream synchronous publish ceiling
//	loadgen baseline serve the minimal reference bridge
//	loadgen scale   fill the job ledger with N jobs, then measure the
//	                bridge's and the submitter's start-up, memory and work
//	loadgen wrkdata write pre-minted webhook requests for wrk
//	                (scripts/bench/wrk.sh), optionally known to the ledger
//	loadgen feed    record those jobs in the ledger just ahead of their
//	                webhooks, as the submitter would, until stopped
//
// Run `loadgen <command> -h` for the flags; scripts/bench/run.sh has the
// commands behind the published figures.
package main

import (
	"os"

	"github.com/kreabus/kreabus/internal/loadgen"
)

func main() { os.Exit(loadgen.Main(os.Args[1:])) }

package submitter

import (
	"context"
	"sync/atomic"

	"github.com/kreabus/kreabus/pkg/events"
)

// pullGate sizes each pull of requests by the gate, so that no request
// waits in hand for an API slot while its ack wait runs: the pull asks for
// one request per API slot taken (and rate token, with a rate limit).
// While submission is paused the gate grants a single slot, the probe:
// the request pulled under it tells whether the account works again.
type pullGate struct {
	g     *gate
	slots int // KREABUS_SUBMIT_CONCURRENCY: most API slots one pull takes
}

var _ events.PullGate = pullGate{}

func (p pullGate) Acquire(ctx context.Context, most int) (events.Grant, error) {
	probe, err := p.g.acquire(ctx)
	if err != nil {
		return nil, err
	}
	n := 1
	if !probe {
		n += p.g.acquireMore(min(most, p.slots) - 1)
	}
	k, err := p.g.waitRate(ctx, n-1)
	if err != nil {
		p.g.release(n, probe)
		return nil, err
	}
	if k < n {
		p.g.release(n-k, false)
		n = k
	}
	return &pullGrant{g: p.g, n: n, probe: probe}, nil
}

// pullGrant is the API slots taken for one pull. Each request pulled
// under it gives its slot back when its call ended (Submitter.handle);
// Release gives back the slots no request came for.
type pullGrant struct {
	g     *gate
	n     int
	probe bool        // the single slot is the probe
	taken atomic.Bool // the probe's request was handed out
}

func (gr *pullGrant) N() int { return gr.n }

// Release gives back unused slots; for a probe grant (one slot), the
// probe too, so another request can be the probe.
func (gr *pullGrant) Release(unused int) { gr.g.release(unused, gr.probe) }

// pulledAsProbe reports whether the request a handler's ctx is for was
// pulled as the probe. A probe grant is for one request, so the first
// (only) request under it is the probe.
func pulledAsProbe(ctx context.Context) bool {
	g, ok := events.PullGrant(ctx)
	if !ok {
		return false
	}
	gr, ok := g.(*pullGrant)
	return ok && gr.probe && gr.taken.CompareAndSwap(false, true)
}

package events

import "context"

// A PullGate bounds a consumption's pulls by more than its free handlers:
// a limit on the work behind the handlers, a rate, a pause. Before each
// pull Consume takes every free handler slot (at least one) and asks
// Acquire for up to that many messages; it pulls what the Grant allows and
// afterwards calls the Grant's Release with the part no message came for.
// A message pulled but never handed to a handler (the consumption
// stopped first) is released too, one by one, from another goroutine.
// Acquire may block as long as it needs: its ctx ends when the
// consumption stops, and nothing is pulled then. Consume calls Acquire
// from one goroutine, one pull at a time.
type PullGate interface {
	Acquire(ctx context.Context, max int) (Grant, error)
}

// A Grant is what a PullGate allowed for one pull. Handlers of the
// messages pulled under it find it with PullGrant, for what the gate
// needs to know per pull (say, which message is a probe).
type Grant interface {
	// N is how many messages the pull may ask for, from 1 to the max
	// given to Acquire.
	N() int
	// Release gives back the part of the grant no message came for.
	Release(unused int)
}

// WithPullGate has every pull of Consume wait for g's Grant (ConsumeJobs
// refuses it: it settles malformed events without its handler). The
// default pulls for as many messages as there are free handlers.
func WithPullGate(g PullGate) ConsumeOpt {
	return func(o *consumeOpts) error {
		if g == nil {
			return invalidOption("pull gate is nil")
		}
		o.gate = g
		return nil
	}
}

type grantKey struct{}

// PullGrant returns the Grant of the pull that brought the message a
// MsgHandler's ctx is for, when the consumption has a PullGate.
func PullGrant(ctx context.Context) (Grant, bool) {
	g, ok := ctx.Value(grantKey{}).(Grant)
	return g, ok
}

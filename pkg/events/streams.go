package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream defaults.
const (
	// DefaultJobsMaxAge is how long job events are kept.
	DefaultJobsMaxAge = 7 * 24 * time.Hour
	// DefaultDuplicateWindow is KREA_JOBS' de-duplication window; far longer
	// than the server's 2-minute default, since Krea may repeat a webhook late.
	DefaultDuplicateWindow = time.Hour
	// DefaultReplicas is the replica count of created streams.
	DefaultReplicas = 1
)

// StreamOptions configure the kreabus streams.
type StreamOptions struct {
	Replicas        int
	JobsMaxAge      time.Duration
	DuplicateWindow time.Duration
	// Storage defaults to file storage.
	Storage jetstream.StorageType
}

func (o *StreamOptions) setDefaults() {
	if o.Replicas <= 0 {
		o.Replicas = DefaultReplicas
	}
	if o.JobsMaxAge <= 0 {
		o.JobsMaxAge = DefaultJobsMaxAge
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = DefaultDuplicateWindow
	}
}

// RequestsStreamConfig is the configuration of KREA_REQUESTS: a work queue,
// so a request is removed once the submitter acknowledges it.
func RequestsStreamConfig(o StreamOptions) jetstream.StreamConfig {
	o.setDefaults()
	return jetstream.StreamConfig{
		Name:        StreamRequests,
		Description: "kreabus generation requests",
		Subjects:    []string{RequestsSubjects},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     o.Storage,
		Replicas:    o.Replicas,
		Duplicates:  2 * time.Minute,
		Discard:     jetstream.DiscardOld,
	}
}

// JobsStreamConfig is the configuration of KREA_JOBS.
func JobsStreamConfig(o StreamOptions) jetstream.StreamConfig {
	o.setDefaults()
	dup := o.DuplicateWindow
	if dup > o.JobsMaxAge {
		dup = o.JobsMaxAge // the server refuses a window longer than MaxAge
	}
	return jetstream.StreamConfig{
		Name:        StreamJobs,
		Description: "kreabus job events",
		Subjects:    []string{JobsSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     o.Storage,
		Replicas:    o.Replicas,
		MaxAge:      o.JobsMaxAge,
		Duplicates:  dup,
		Discard:     jetstream.DiscardOld,
		RePublish:   &jetstream.RePublish{Source: JobsSubjects, Destination: FollowSubjects},
	}
}

// ErrIncompatibleStream is returned by EnsureStream when a stream exists
// with a configuration kreabus cannot work with.
var ErrIncompatibleStream = errors.New("events: existing stream is incompatible")

// ErrNoRePublish is returned by EnsureStream when an existing stream lacks
// the RePublish its configuration asks for and could not be given it (a
// user without the right to update the stream): the stream works, but
// followers of the republished subjects hear nothing until someone
// allowed to update it (an operator) adds it.
var ErrNoRePublish = errors.New("events: existing stream lacks its RePublish")

// EnsureStream creates the stream when missing and checks it when present.
// An existing stream is left alone unless it is incompatible (other
// subjects or retention), which is an error: changing an operator's stream
// behind their back is not ours to do. The one change made is adding a
// missing RePublish (KREA_JOBS' follow subjects, added after its first
// release): it changes nothing stored, and an update that is refused
// gives ErrNoRePublish with the stream.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = js.Stream(ctx, cfg.Name) // lost a race with another replica
		}
	}
	if err != nil {
		return nil, fmt.Errorf("events: stream %s: %w", cfg.Name, err)
	}
	have := s.CachedInfo().Config
	if err := CheckStream(have, cfg); err != nil {
		return s, err
	}
	if cfg.RePublish != nil && have.RePublish == nil {
		have.RePublish = cfg.RePublish
		updated, err := js.UpdateStream(ctx, have)
		if err != nil {
			return s, fmt.Errorf("%w: %s to %s: %w", ErrNoRePublish, cfg.Name, cfg.RePublish.Destination, err)
		}
		s = updated
	}
	return s, nil
}

// CheckStream reports whether an existing stream configuration is
// compatible with what kreabus needs.
func CheckStream(have, want jetstream.StreamConfig) error {
	if have.Retention != want.Retention {
		return fmt.Errorf("%w: %s has retention %s, want %s", ErrIncompatibleStream, have.Name, have.Retention, want.Retention)
	}
	if len(want.Subjects) == 0 {
		return nil
	}
	covered := false
	for _, s := range have.Subjects {
		if s == want.Subjects[0] {
			covered = true
		}
	}
	if !covered {
		return fmt.Errorf("%w: %s does not capture %s", ErrIncompatibleStream, have.Name, want.Subjects[0])
	}
	return nil
}

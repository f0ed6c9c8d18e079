// Package events is the kreabus bus contract in Go: subjects, stream
// configurations, header names, the generation request and job event types,
// webhook tokens, and helpers for publishers and consumers.
//
// # Consuming
//
// Consuming works as in nats.go's jetstream package: the JetStream consumer
// belongs to the caller. JobsConsumerConfig describes a consumer of job
// events (its statuses become filter subjects); the caller creates it
// (js.CreateOrUpdateConsumer) or binds to one an operator made
// (js.Consumer), and ConsumeJobs consumes through it, never creating or
// changing a consumer. The returned ConsumeContext ends with Drain or Stop,
// like a jetstream.ConsumeContext; no context bounds it. A handler's
// context ends at its message's ack wait or at Stop. Consume is the same
// pull loop for raw messages: every consumer of kreabus's own uses it.
//
// # Statuses
//
// A job event's status is a krea.Status and names its subject,
// krea.jobs.<status>. Krea's job statuses are declared in package krea
// (they are the API's words; a krea.Client user needs them without this
// package); the three kreabus adds (submitted, rejected, mirrored) are
// declared here, with Krea's terminal ones repeated so a consumer names
// every status it filters on from this package. Statuses is the one list
// of both; IsKreabusStatus tells kreabus's own apart.
package events

import "github.com/kreabus/kreabus/pkg/krea"

// Stream names and subjects, as pinned by the design contract.
const (
	StreamRequests = "KREA_REQUESTS"
	StreamJobs     = "KREA_JOBS"

	// RequestsPrefix is the prefix of every generation request subject,
	// e.g. "krea.requests.image".
	RequestsPrefix = "krea.requests."
	// RequestsSubjects is the filter of the KREA_REQUESTS stream.
	RequestsSubjects = "krea.requests.>"

	// JobsPrefix is the prefix of every job event subject.
	JobsPrefix = "krea.jobs."
	// JobsSubjects is the filter of the KREA_JOBS stream.
	JobsSubjects = "krea.jobs.>"

	// FollowPrefix is the prefix of the de-duplicated follow subjects:
	// KREA_JOBS republishes every event it stores (stream RePublish) to
	// FollowPrefix+<status>, so a core NATS subscriber, without a
	// consumer, hears each stored event once. A publish JetStream dropped
	// as a duplicate is never stored, so never republished; a subscriber
	// of krea.jobs.> would hear it (core NATS delivers every publish).
	FollowPrefix = "kreabus.events."
	// FollowSubjects is the wildcard of every follow subject.
	FollowSubjects = "kreabus.events.>"
)

// Job event statuses: every status a kreabus job event is documented to
// carry, one subject krea.jobs.<status> each (JobSubject). Statuses lists
// them; they are the one list subjects, validation and the documentation
// follow.
//
// A status is a krea.Status. Krea's own job statuses are declared in
// package krea, because they are the API's words and a krea.Client user
// needs them without this package; the terminal ones, which every
// consumer names, are repeated here so a consumer names every status from
// one package. The three statuses kreabus adds are declared here only:
// Krea never reports them, and the bridge refuses a webhook claiming one
// (IsKreabusStatus). Any other well-formed status Krea may report later
// is published as krea.jobs.<status> too.
const (
	// StatusSubmitted: the API accepted a request; the body is Krea's
	// answer (a job object).
	StatusSubmitted krea.Status = "submitted"
	// StatusRejected: the request never became a job; the body is a
	// Rejection (Event.Rejection).
	StatusRejected krea.Status = "rejected"
	// StatusMirrored: the mirror stored a completed job's results in the
	// Object Store. Not a Krea job status: the job stays completed; its
	// Nats-Msg-Id is "<job_id>:mirrored" and its body a Mirrored
	// (Event.Objects), not a job object.
	StatusMirrored krea.Status = "mirrored"

	// Krea's terminal job statuses (krea.StatusCompleted, ...): one event
	// each per job, de-duplicated on the bare job ID.
	StatusCompleted = krea.StatusCompleted
	StatusFailed    = krea.StatusFailed
	StatusCancelled = krea.StatusCancelled
)

// kreabusStatuses are the statuses kreabus adds to Krea's.
var kreabusStatuses = [...]krea.Status{StatusSubmitted, StatusRejected, StatusMirrored}

// Statuses returns every documented job event status: Krea's job statuses
// (krea.Statuses), then the three kreabus adds (submitted, rejected,
// mirrored).
func Statuses() []krea.Status {
	return append(krea.Statuses(), kreabusStatuses[:]...)
}

// IsKreabusStatus reports whether s is one of the event statuses kreabus
// adds (submitted, rejected, mirrored) rather than a status Krea reports: a
// webhook claiming one of them is refused.
func IsKreabusStatus(s krea.Status) bool {
	for _, k := range kreabusStatuses {
		if s == k {
			return true
		}
	}
	return false
}

// JobSubject is the subject of a job event with the given status. The status
// must be Valid; callers validate untrusted input first.
func JobSubject(status krea.Status) string {
	return JobsPrefix + string(status)
}

// JobMsgID is the JetStream de-duplication ID of a job event: the bare job ID
// for terminal statuses, so a job lands in a terminal subject at most once
// whatever its status and source, and "<job_id>:<status>" otherwise.
func JobMsgID(jobID string, status krea.Status) string {
	if status.IsTerminal() {
		return jobID
	}
	return jobID + ":" + string(status)
}

// RejectedMsgID is the de-duplication ID of a krea.jobs.rejected event.
func RejectedMsgID(requestID string) string {
	return "rejected:" + requestID
}

// Package events is the kreabus bus contract in Go: subjects, stream
// configurations, header names, the generation request and job event types,
// webhook tokens, and helpers for publishers and consumers.
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

	// StatusSubmitted and StatusRejected are the two event statuses kreabus
	// adds to Krea's own: the API accepted a request, or it never became a job.
	StatusSubmitted krea.Status = "submitted"
	StatusRejected  krea.Status = "rejected"
	// StatusMirrored is the event the mirror publishes once a completed
	// job's results are in the Object Store. It is not a Krea job status:
	// the job stays completed; its Nats-Msg-Id is "<job_id>:mirrored" and
	// its body a Mirrored, not a job object.
	StatusMirrored krea.Status = "mirrored"
)

// IsKreabusStatus reports whether s is one of the event statuses kreabus
// adds (submitted, rejected, mirrored) rather than a status Krea reports: a
// webhook claiming one of them is refused.
func IsKreabusStatus(s krea.Status) bool {
	return s == StatusSubmitted || s == StatusRejected || s == StatusMirrored
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

// Package submitter turns generation requests on KREA_REQUESTS into Krea API
// calls, and their outcomes into job events on KREA_JOBS, paying Krea once
// per request.
//
// A durable pull consumer (KREABUS_CONSUMER, explicit acks) takes requests
// off the work-queue stream through events.Consume, kreabus's one pull
// loop, each pull sized by the gate (pull.go, gate.go): never more than the
// adaptive concurrency limit allows (KREABUS_SUBMIT_CONCURRENCY at most),
// paced by KREABUS_SUBMIT_RATE when set. For each request:
//
//   - It is decoded and validated (events.DecodeRequest). A request without
//     request_id gets one derived from its stream position, the same on
//     every redelivery.
//   - The ledger is asked for req.<request_id>. A request already submitted
//     or rejected is a duplicate, whatever this copy says: its outcome's
//     event is published again (JetStream de-duplicates it) and the copy is
//     acknowledged; the API is not called. An invalid request the ledger
//     does not know ends in one krea.jobs.rejected event, recorded first.
//   - Otherwise its intent is written (status sending, attempt n, time),
//     revision-checked against what was read, so two deliveries of one
//     request cannot both send it; then it is POSTed to its path with
//     X-Webhook-URL = KREABUS_PUBLIC_URL/webhooks/krea/<token>. On success
//     the ledger records the job (job.<id>, open.<id>, then the request),
//     krea.jobs.submitted is published with the API's answer as body, and
//     only then is the request acked.
//   - A failure that certainly made no job (429, 408, or a connection that
//     failed before the request was sent) records the attempt as retrying
//     and hands the request back with a delay (events.Backoff of
//     KREABUS_RETRY_BACKOFF_MIN and _MAX: doubling per delivery, drawn
//     from the upper half; at least the Retry-After the API asked for) until
//     KREABUS_MAX_DELIVERIES such attempts; then krea.jobs.rejected says
//     "out of retries". Nothing is dropped silently.
//   - A failure that may have made a job (a timeout or broken connection
//     after sending, a 5xx, a 2xx without a usable body, our own stop
//     cutting a call) makes the request uncertain: see resolveUncertain. A
//     delivery that finds a request "sending" longer than a call can last
//     (its process died mid-call) treats it the same way.
//   - A request error (400, 404, 409, 410, 422) ends in krea.jobs.rejected
//     with the API's message (and the replacement model for a 410).
//   - An account error (401, 402, 403) pauses all submission: no request is
//     taken off the queue, those in hand are handed back with a delay, /readyz
//     says so and kreabus_submitter_paused is 1. After a backoff
//     (KREABUS_PAUSE_BACKOFF_MIN, doubling up to _MAX) one request is let
//     through as a probe; when the API accepts it (or refuses it for a reason
//     of its own) submission resumes. Such calls do not count as attempts.
//   - When the ledger cannot be read or written, the API is not called (it
//     might pay twice): the request is handed back.
//
// A 429 or a timeout also halves the concurrency limit (and the rate, when
// limited), and a Retry-After holds every new call until it has passed;
// successes regain one slot per round of calls. The limit counts requests
// from the pull until the API answered; the ledger write, the event and the
// ack that follow do not hold an API slot (up to twice the concurrency of
// requests are in hand in all).
//
// # Paying once
//
// Krea has no idempotency key: a request sent twice is two paid jobs. The
// intent written before every call, and the rule that an uncertain request
// is sent again only on evidence that no job was made, close the windows of
// a crash mid-call, a slow API and a lost answer. The evidence, in order:
// the ledger (the Recorder links a request to the job whose webhook carried
// its token), then Krea's job listing around the call. What remains is
// bounded by KREABUS_UNCERTAIN_WAIT and named in the README's guarantees. A
// second job made all the same is recorded as extra; its events are stored
// and marked Kreabus-Extra-Job, never dropped.
//
// # Graceful stop
//
// When the context given to Run ends, no further request is taken; calls in
// flight finish (bounded by KREABUS_API_TIMEOUT), their events are published
// and their requests acknowledged, then Run returns. Requests a pull brought
// in that no handler had started go back to the stream at once, for another
// replica. KREABUS_SHUTDOWN_TIMEOUT bounds
// the whole wait; a request still in hand then is cut off and redelivered
// later.
package submitter

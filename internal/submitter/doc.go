// Package submitter turns generation requests on KREA_REQUESTS into Krea API
// calls, and their outcomes into job events on KREA_JOBS.
//
// A durable pull consumer (KREABUS_CONSUMER, explicit acks) takes requests
// off the work-queue stream, never more than the adaptive concurrency limit
// allows (KREABUS_SUBMIT_CONCURRENCY at most), paced by KREABUS_SUBMIT_RATE
// when set. For each request:
//
//   - It is decoded and validated (events.DecodeRequest). An invalid one
//     ends in one krea.jobs.rejected event (Nats-Msg-Id rejected:<request_id>)
//     and is acknowledged (acks wait for the server's confirmation). A
//     request without request_id gets one derived from its stream position,
//     the same on every redelivery.
//   - The ledger is asked for req.<request_id>. When present, the API already
//     accepted this request (a redelivery after a crash or a lost ack): the
//     API is not called again; the krea.jobs.submitted event is published
//     again (JetStream de-duplicates it on <job_id>:submitted) and the
//     request acknowledged.
//   - Otherwise the request is POSTed to its path with X-Webhook-URL =
//     KREABUS_PUBLIC_URL/webhooks/krea/<token>. On success the ledger record
//     is written, then krea.jobs.submitted is published with the API's answer
//     as body, and only once JetStream acknowledged it is the request acked.
//   - A retryable failure (429, 408, 5xx, network errors, timeouts) hands the
//     request back with a delay (exponential backoff with full jitter, at
//     least the Retry-After the API asked for) until it has been delivered
//     KREABUS_MAX_DELIVERIES times; then it ends in krea.jobs.rejected
//     saying "out of retries: <last error>". Nothing is dropped silently.
//   - A request error (400, 404, 409, 410, 422) ends in krea.jobs.rejected
//     with the API's message (and the replacement model for a 410).
//   - An account error (401, 402, 403) pauses all submission: no request is
//     taken off the queue, those in hand are handed back with a delay, /readyz
//     says so and kreabus_submitter_paused is 1. After a backoff
//     (KREABUS_PAUSE_BACKOFF_MIN, doubling up to _MAX) one request is let
//     through as a probe; when the API accepts it (or refuses it for a reason
//     of its own) submission resumes. An account error never rejects
//     requests, and deliveries handed back during a pause do not count
//     towards KREABUS_MAX_DELIVERIES (as far as the process handing them
//     back remembers: the count is in memory).
//   - When the ledger cannot be read, the API is not called (it might pay
//     twice): the request is handed back like a retryable failure.
//
// A 429 also halves the concurrency limit (and the rate, when limited), and
// a Retry-After holds every new call until it has passed; successes regain
// one slot per round of calls. The limit counts requests from the pull until
// the API answered; the ledger write, the event and the ack that follow do
// not hold an API slot (up to twice the concurrency of requests are in hand
// in all).
//
// # Paying twice
//
// Krea has no idempotency key: a request sent twice is two paid jobs. The
// ledger record written before the ack closes the window of a crash or lost
// ack after the call; a rejection is recorded too before its event, so a
// rejected request redelivered is not sent again. What remains:
//
//   - A crash (or a ledger write that keeps failing) between the API's answer
//     and the ledger write: the request is redelivered, the ledger knows
//     nothing, and the request is sent and paid for a second time. The
//     window is one KV write long; a failed write is retried a few times and
//     logged at error level (kreabus_submitter_ledger_errors_total).
//   - A call that fails after the request reached Krea (a timeout or a
//     connection lost while waiting for the answer, or an answer lost on the
//     way, like a 502 from a proxy after Krea created the job) looks exactly
//     like one that never arrived; it is retried and may create a second
//     job. Only Krea could close this one, with an idempotency key. A 2xx
//     answer the client cannot read is not retried for this reason: it ends
//     in krea.jobs.rejected (malformed_response) and is logged at error
//     level, since a job may exist.
//   - Two copies of one request_id processed at the same moment by two
//     submitter replicas (published twice, outside KREA_REQUESTS' duplicate
//     window): both may miss the ledger. Within one process the second copy
//     waits for the first.
//
// # Graceful stop
//
// When the context given to Run ends, no further request is taken; calls in
// flight finish (bounded by KREABUS_API_TIMEOUT), their events are published
// and their requests acknowledged, then Run returns. Requests a pull brought
// in after the stop are handled the same way. KREABUS_SHUTDOWN_TIMEOUT bounds
// the whole wait; a request still in hand then is cut off and redelivered
// later.
package submitter

package events

// Header names on job events. Nats-Msg-Id is JetStream's own.
const (
	HeaderMsgID     = "Nats-Msg-Id"
	HeaderJobID     = "Krea-Job-Id"
	HeaderStatus    = "Krea-Status"
	HeaderRequestID = "Kreabus-Request-Id"
	HeaderSource    = "Kreabus-Source"
	HeaderMetadata  = "Kreabus-Metadata"
	// HeaderReason carries the reason on krea.jobs.rejected events and on
	// failed events that kreabus itself decided.
	HeaderReason = "Kreabus-Reason"
	// HeaderExtraJob is "true" on the events of a second (paid) job of a
	// request: Krea made two jobs for one request (an answer was lost, or
	// an uncertain call was sent again). Such events are stored, never
	// dropped, so the result that was paid for reaches its consumers.
	HeaderExtraJob = "Kreabus-Extra-Job"
	// HeaderTraceParent is the W3C trace context header, carried on from
	// the webhook that brought the event.
	HeaderTraceParent = "traceparent"

	// HeaderContentType and HeaderSourceURL are headers of the objects the
	// mirror stores in the results bucket: the media type the result was
	// served with and the URL it was copied from.
	HeaderContentType = "Content-Type"
	HeaderSourceURL   = "Kreabus-Source-Url"

	// CloudEvents NATS binary-mode headers: every attribute is a header
	// named ce-<attribute>; the body is the event's data.
	HeaderCESpecVersion     = "ce-specversion"
	HeaderCEID              = "ce-id"
	HeaderCEType            = "ce-type"
	HeaderCESource          = "ce-source"
	HeaderCETime            = "ce-time"
	HeaderCEDataContentType = "ce-datacontenttype"
	// HeaderCETraceParent is the distributed-tracing extension's
	// traceparent attribute, the same value as HeaderTraceParent.
	HeaderCETraceParent = "ce-traceparent"

	// CEDataContentType is the ce-datacontenttype of every event: bodies
	// are JSON (Krea's job object, or kreabus' rejection).
	CEDataContentType = "application/json"

	// CESpecVersion is the CloudEvents version kreabus emits.
	CESpecVersion = "1.0"
	// CETypePrefix prefixes the status in ce-type.
	CETypePrefix = "ai.krea.job."
	// CESource is the default ce-source of kreabus events.
	CESource = "kreabus"
)

// Source is the value of the Kreabus-Source header: who produced the event.
type Source string

// Event sources.
const (
	SourceWebhook   Source = "webhook"
	SourcePoll      Source = "poll"
	SourceSubmitter Source = "submitter"
	// SourceMirror marks the krea.jobs.mirrored events of the mirror.
	SourceMirror Source = "mirror"
)

package events

// FetchWait is how long one pull waits at the server: a test watches a
// consumer for longer than that.
const FetchWait = fetchWait

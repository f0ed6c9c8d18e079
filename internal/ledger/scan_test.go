package ledger

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/kreabus/kreabus/pkg/events"
)

// jobRecordSeeds are job records as the package writes them, and the
// shapes the scan must leave to encoding/json.
func jobRecordSeeds(t testing.TB) [][]byte {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	recs := []Record{
		{RequestID: "3f1e5a2c-7b4d-4c8e-9a1f-2d6b8c0e4a71", JobID: "9b2d4f6a-1c3e-4a5b-8d7f-0e2c4a6b8d9f", Path: "/generate/image/bfl/flux-1-dev",
			Status: events.StatusSubmitted, Metadata: json.RawMessage(`{"user":"u-1","tags":["a","b"],"n":{"x":[1,2]}}`), SubmittedAt: now, UpdatedAt: now, Source: events.SourceSubmitter},
		{RequestID: "r-2", JobID: "j-2", Status: "completed", Terminal: true, Extra: true, UpdatedAt: now},
		{RequestID: "r-3", JobID: "j-3", Status: "processing", Metadata: json.RawMessage(`"quoted \"string\" metadata"`)},
	}
	var seeds [][]byte
	for _, r := range recs {
		b, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return append(seeds,
		[]byte(`{}`),
		[]byte(` { "request_id" : "r" , "terminal" : true , "metadata" : null } `),
		[]byte(`{"request_id":"a","request_id":null}`),
		[]byte(`{"request_id":"a","REQUEST_ID":"b"}`),
		[]byte(`{"request_id":"r\u0041"}`),
		[]byte(`{"request_id":"r","terminal":"yes"}`),
		[]byte(`{"request_id":"r","metadata":{"a":"}"}}`),
		[]byte(`{"request_id":"r","metadata":[1,{"b":[]}],"extra":true}`),
		[]byte(`{"request_id":"r",}`),
		[]byte(`{"request_id":"r"`),
		[]byte(`{"request_id":"\xff"}`),
		[]byte(`[]`),
	)
}

// TestScanJobFacts: on the records the package writes, the scan reads what
// encoding/json reads, without falling back.
func TestScanJobFacts(t *testing.T) {
	for _, seed := range jobRecordSeeds(t)[:3] {
		got, ok := scanJobFacts(seed)
		if !ok {
			t.Fatalf("scan gave up on a record the package wrote: %s", seed)
		}
		want, err := decodeJobFacts(seed)
		if err != nil {
			t.Fatal(err)
		}
		sameFacts(t, seed, got, want)
	}
}

// FuzzJobFacts: whatever the record, the scan either gives up or reads
// what encoding/json reads from valid JSON; it never panics.
func FuzzJobFacts(f *testing.F) {
	for _, s := range jobRecordSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := scanJobFacts(data)
		if !ok || !json.Valid(data) {
			// Records are written with json.Marshal: invalid JSON the scan
			// accepts cannot come from the bucket, and when it gives up
			// encoding/json decides.
			return
		}
		want, err := decodeJobFacts(data)
		if err != nil {
			t.Fatalf("scan accepted %q, encoding/json refused it: %v", data, err)
		}
		sameFacts(t, data, got, want)
	})
}

func sameFacts(t *testing.T, data []byte, got, want jobFacts) {
	t.Helper()
	if got.owner != want.owner || got.terminal != want.terminal || got.extra != want.extra || !bytes.Equal(got.metadata, want.metadata) {
		t.Fatalf("%s:\nscan %+v (metadata %s)\njson %+v (metadata %s)", data, got, got.metadata, want, want.metadata)
	}
}

func BenchmarkJobFacts(b *testing.B) {
	rec := jobRecordSeeds(b)[0]
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := scanJobFacts(rec); !ok {
				b.Fatal("gave up")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeJobFacts(rec); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestQueuedRequestID(t *testing.T) {
	at := time.Unix(1700000000, 123456789)
	derived := DerivedRequestID("KREA_REQUESTS", 42, at)
	if derived != DerivedRequestID("KREA_REQUESTS", 42, at) || derived == DerivedRequestID("KREA_REQUESTS", 43, at) || len(derived) != 36 {
		t.Fatalf("derived IDs not stable and distinct: %q", derived)
	}
	for body, want := range map[string]string{
		`{"request_id":"req-1","path":"/generate/image/bfl/flux-1-dev","input":{}}`: "req-1",
		`{"request_id":"req-1","path":"not a path"}`:                                "req-1",
		`{"path":"/generate/image/bfl/flux-1-dev","input":{}}`:                      derived,
		`{"request_id":null,"path":"/generate/image/bfl/flux-1-dev"}`:               derived,
		`{"request_id":"","path":"/generate/image/bfl/flux-1-dev"}`:                 derived,
		`{"request_id":"has space","path":"/generate/image/bfl/flux-1-dev"}`:        derived,
		`not json`: derived,
	} {
		if got := QueuedRequestID([]byte(body), "KREA_REQUESTS", 42, at); got != want {
			t.Errorf("%s: %q, want %q", body, got, want)
		}
	}
}

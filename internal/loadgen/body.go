package loadgen

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/kreabus/kreabus/internal/ledger/ledgertest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// DefaultBodySize is the default webhook body size: about what Krea sends
// for a completed image job with a couple of result URLs.
const DefaultBodySize = 300

// paddingField is an unknown field used to grow bodies to the asked size;
// the contract stores bodies byte for byte, unknown fields included.
const paddingField = `,"x_loadgen_padding":"`

// jobBody returns a Krea webhook body for a job in status, padded with an
// unknown field to at least size bytes.
func jobBody(jobID string, status krea.Status, size int, now time.Time) []byte {
	created := now.Add(-7 * time.Second).UTC().Format("2006-01-02T15:04:05.000Z")
	completed := now.UTC().Format("2006-01-02T15:04:05.000Z")
	var b strings.Builder
	b.Grow(max(size, 320))
	b.WriteString(`{"job_id":"`)
	b.WriteString(jobID)
	b.WriteString(`","status":"`)
	b.WriteString(string(status))
	b.WriteString(`","created_at":"`)
	b.WriteString(created)
	b.WriteString(`","completed_at":"`)
	b.WriteString(completed)
	b.WriteString(`","result":`)
	if status == krea.StatusFailed {
		b.WriteString(`{"error":"generation failed: content policy"}`)
	} else {
		b.WriteString(`{"urls":["https://gen.krea.ai/images/`)
		b.WriteString(uuid.NewString())
		b.WriteString(`.png","https://gen.krea.ai/images/`)
		b.WriteString(uuid.NewString())
		b.WriteString(`.png"]}`)
	}
	// Without padding the body ends with "}"; with padding it gets the
	// unknown field first, sized so the total is exactly size.
	if pad := size - b.Len() - 1 - len(paddingField) - 1; pad >= 0 {
		b.WriteString(paddingField)
		b.WriteString(strings.Repeat("p", pad))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return []byte(b.String())
}

// naturalBodySize is the size of an unpadded completed body.
func naturalBodySize() int {
	return len(jobBody(uuid.NewString(), krea.StatusCompleted, 0, time.Now()))
}

func itoa(n int) string { return strconv.Itoa(n) }

// WriteWrkData writes n pre-minted webhook requests to path for wrk
// (scripts/bench/wrk-webhooks.lua), one "<path> <body>" line each: the
// token of filled request i and a completed body for its job (the IDs of
// ledgertest.FillIDs), so the same file serves jobs the ledger knows and,
// on an empty ledger, jobs it does not.
func WriteWrkData(path, secret string, n, size int) error {
	tok, err := events.NewTokenizer(secret, "")
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	now := time.Now()
	for i := range n {
		rid, jid := ledgertest.FillIDs(i)
		w.WriteString(events.WebhookPathPrefix)
		w.WriteString(tok.Mint(rid))
		w.WriteByte(' ')
		w.Write(jobBody(jid, krea.StatusCompleted, size, now))
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

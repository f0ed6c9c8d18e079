package kreatest

import (
	"bytes"
	"context"
	"net/http"
	"time"

	"github.com/kreabus/kreabus/pkg/krea"
)

// webhookLocked schedules the webhook for j's current state, rolling the
// webhook faults. The body is taken now, so a later state change cannot
// alter what this delivery says.
func (s *Server) webhookLocked(j *simJob) {
	if j.webhookURL == "" || j.noWebhook {
		return
	}
	d := webhookPlan{jobID: j.id, status: j.status, url: j.webhookURL, body: s.jsonLocked(j)}
	f := s.faults
	if s.rollLocked(f.DropWebhookRate) {
		s.deliveries = append(s.deliveries, WebhookDelivery{
			JobID: d.jobID, Status: d.status, URL: d.url, Dropped: true, Time: time.Now(),
		})
		s.logf("dropped webhook for job %s (%s)", d.jobID, d.status)
		return
	}
	if s.rollLocked(f.LateWebhookRate) {
		d.late = f.LateWebhookDelay
		if d.late == 0 {
			d.late = DefaultLateWebhookDelay
		}
	}
	d.duplicate = s.rollLocked(f.DuplicateWebhookRate)
	s.goLocked(func() { s.deliver(d) })
}

type webhookPlan struct {
	jobID     string
	status    krea.Status
	url       string
	body      []byte
	late      time.Duration
	duplicate bool
}

func (s *Server) deliver(d webhookPlan) {
	if d.late > 0 && !s.sleep(d.late, nil) {
		return
	}
	s.deliverWithRetries(d, false)
	if d.duplicate && s.ctx.Err() == nil {
		// A repeat of a delivery that already happened (or was given up
		// on), as Krea warns can occur.
		s.deliverWithRetries(d, true)
	}
}

// deliverWithRetries POSTs the webhook until a 2xx answer or
// WebhookAttempts tries, backing off exponentially.
func (s *Server) deliverWithRetries(d webhookPlan, dup bool) bool {
	backoff := s.cfg.WebhookBackoff
	for attempt := 1; ; attempt++ {
		code, err := s.post(d)
		rec := WebhookDelivery{
			JobID: d.jobID, Status: d.status, URL: d.url, Attempt: attempt, StatusCode: code,
			Duplicate: dup, Late: d.late > 0, Time: time.Now(),
		}
		if err != nil {
			rec.Err = err.Error()
		}
		s.mu.Lock()
		s.deliveries = append(s.deliveries, rec)
		s.mu.Unlock()
		if err == nil && code >= 200 && code <= 299 {
			return true
		}
		if s.ctx.Err() != nil {
			return false
		}
		s.logf("webhook for job %s attempt %d/%d: status %d, err %v", d.jobID, attempt, s.cfg.WebhookAttempts, code, err)
		if attempt >= s.cfg.WebhookAttempts || !s.sleep(backoff, nil) {
			return false
		}
		backoff *= 2
	}
}

func (s *Server) post(d webhookPlan) (int, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.WebhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, bytes.NewReader(d.body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "kreatest/"+krea.Version)
	resp, err := s.hookHC.Do(req)
	if err != nil {
		return 0, err
	}
	// Drain a little so the connection can be reused, not more: a
	// receiver's answer body means nothing to Krea.
	var buf [512]byte
	_, _ = resp.Body.Read(buf[:])
	resp.Body.Close()
	return resp.StatusCode, nil
}

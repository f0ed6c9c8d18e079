package kreatest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/kreabus/kreabus/pkg/krea"
)

// TimeFormat is how the simulator writes timestamps: ISO 8601 UTC with
// milliseconds, like Krea ("2026-02-13T02:20:58.265Z").
const TimeFormat = "2006-01-02T15:04:05.000Z"

// simJob is one job. All fields are guarded by Server.mu.
type simJob struct {
	id         string
	path       string
	typ        string // Krea job type, for the list filter
	kind       string // image, video, enhance or train
	webhookURL string
	resultBase string // base of the result URLs
	status     krea.Status
	created    time.Time
	completed  time.Time
	urls       []string
	styleID    string
	failure    *krea.JobError
	willFail   bool
	noWebhook  bool
	runTime    time.Duration
	done       chan struct{} // closed when the job reaches a terminal state
}

// jobBody is a job object on the wire (GET /jobs/{id}, GET /jobs, the
// webhook). Field order follows Krea's examples. Krea's OpenAPI document
// types completed_at as a date-time and result as an object, neither
// nullable nor required: a job that has not ended has neither, so they
// are left out rather than null.
type jobBody struct {
	JobID         string         `json:"job_id"`
	Status        krea.Status    `json:"status"`
	Type          string         `json:"type,omitempty"`
	CreatedAt     string         `json:"created_at"`
	CompletedAt   *string        `json:"completed_at,omitempty"`
	Result        *resultBody    `json:"result,omitempty"`
	Error         *krea.JobError `json:"error,omitempty"`
	EstimatedTime *float64       `json:"estimated_time,omitempty"`
}

// submitAnswer is the answer to a submission. The document requires
// completed_at and result there, both null: the job is pending.
type submitAnswer struct {
	JobID         string      `json:"job_id"`
	Status        krea.Status `json:"status"`
	Type          string      `json:"type,omitempty"`
	CreatedAt     string      `json:"created_at"`
	CompletedAt   *string     `json:"completed_at"` // always null
	Result        *resultBody `json:"result"`       // always null
	EstimatedTime *float64    `json:"estimated_time,omitempty"`
}

type resultBody struct {
	URLs    []string `json:"urls,omitempty"`
	StyleID string   `json:"style_id,omitempty"`
	Error   string   `json:"error,omitempty"`
}

func (s *Server) bodyLocked(j *simJob) jobBody {
	b := jobBody{JobID: j.id, Status: j.status, CreatedAt: j.created.Format(TimeFormat)}
	if s.cfg.ExtraFields {
		b.Type = j.typ
	}
	if j.status.IsTerminal() {
		c := j.completed.Format(TimeFormat)
		b.CompletedAt = &c
	}
	switch j.status {
	case krea.StatusCompleted:
		b.Result = &resultBody{URLs: j.urls, StyleID: j.styleID}
	case krea.StatusFailed:
		if s.cfg.LegacyFailureDetail {
			b.Result = &resultBody{Error: j.failure.Message}
		} else {
			b.Error = j.failure
		}
	}
	return b
}

func (s *Server) jsonLocked(j *simJob) []byte {
	b, err := json.Marshal(s.bodyLocked(j))
	if err != nil {
		panic(err) // plain strings and slices: cannot happen
	}
	return b
}

// kreaJobLocked converts to the client type.
func (s *Server) kreaJobLocked(j *simJob) krea.Job {
	kj := krea.Job{JobID: j.id, Status: j.status}
	c := j.created
	kj.CreatedAt = &c
	b := s.bodyLocked(j)
	if b.CompletedAt != nil {
		t := j.completed
		kj.CompletedAt = &t
	}
	if b.Result != nil {
		kj.Result = &krea.Result{URLs: slices.Clone(b.Result.URLs), StyleID: b.Result.StyleID}
		if b.Result.Error != "" {
			kj.Result.Error, _ = json.Marshal(b.Result.Error)
		}
	}
	if b.Error != nil {
		e := *b.Error
		kj.Error = &e
	}
	return kj
}

// nowLocked returns a creation time unique to the millisecond, so the
// timestamp cursor of GET /jobs never skips or repeats a job.
func (s *Server) nowLocked() time.Time {
	t := time.Now().UTC().Truncate(time.Millisecond)
	if !t.After(s.lastCreated) {
		t = s.lastCreated.Add(time.Millisecond)
	}
	s.lastCreated = t
	return t
}

func (s *Server) handleSubmit(w http.ResponseWriter, r *http.Request, ep endpoint, f Faults) {
	path := r.URL.Path
	hook := r.Header.Get("X-Webhook-URL")
	if ep == epGenerate && len(s.cfg.Models) > 0 && !slices.Contains(s.cfg.Models, path) {
		writeError(w, http.StatusNotFound, "Not found")
		return
	}
	if ret, ok := s.cfg.Retired[path]; ok && ep == epGenerate {
		writeRetired(w, path, ret)
		return
	}
	if f.OutOfCredits {
		writeError(w, http.StatusPaymentRequired, "Insufficient credits")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "Request body too large")
			return
		}
		writeError(w, http.StatusBadRequest, "Could not read request body")
		return
	}
	var fields map[string]json.RawMessage
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '{' || json.Unmarshal(t, &fields) != nil {
		writeError(w, http.StatusBadRequest, "Request body must be a JSON object")
		return
	}
	if hook != "" {
		if u, err := url.Parse(hook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			writeError(w, http.StatusBadRequest, "X-Webhook-URL must be an absolute http(s) URL")
			return
		}
	}
	if s.cfg.CheckInput != nil {
		if err := s.cfg.CheckInput(path, body); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	var prompt string
	_ = json.Unmarshal(fields["prompt"], &prompt)

	j := &simJob{
		id:         uuid.NewString(),
		path:       path,
		webhookURL: hook,
		resultBase: s.resultBase(r),
		willFail:   strings.Contains(prompt, DirectiveFail),
		noWebhook:  strings.Contains(prompt, DirectiveNoWebhook),
		done:       make(chan struct{}),
	}
	if ep == epTrain {
		j.kind, j.typ = "train", "loraTraining"
	} else {
		segs := strings.Split(strings.TrimPrefix(path, "/generate/"), "/")
		j.kind, j.typ = segs[0], segs[2]
	}

	s.mu.Lock()
	if s.active >= s.cfg.Concurrency && len(s.backlog) >= s.cfg.MaxBacklog {
		s.mu.Unlock()
		s.writeRetryable(w, http.StatusTooManyRequests, f)
		return
	}
	j.created = s.nowLocked()
	j.runTime = s.cfg.RunTime + s.jitterLocked(s.cfg.RunJitter)
	s.jobs[j.id] = j
	s.order = append(s.order, j)
	s.created[hook]++
	s.submissions = append(s.submissions, Submission{
		JobID: j.id, Path: path, WebhookURL: hook, Body: json.RawMessage(body),
		UserAgent: r.Header.Get("User-Agent"), Time: j.created,
	})
	if s.active < s.cfg.Concurrency {
		s.startLocked(j)
	} else {
		j.status = krea.StatusBacklogged
		s.backlog = append(s.backlog, j)
	}
	lost := s.rollLocked(f.LostAnswerRate)
	b := s.bodyLocked(j)
	s.mu.Unlock()

	if lost {
		s.logf("job %s created, answer lost (502)", j.id)
		s.writeRetryable(w, http.StatusBadGateway, f)
		return
	}
	a := submitAnswer{JobID: b.JobID, Status: b.Status, Type: b.Type, CreatedAt: b.CreatedAt}
	if s.cfg.ExtraFields {
		est := (s.cfg.QueueTime + s.cfg.RunTime).Seconds()
		a.EstimatedTime = &est
	}
	out, _ := json.Marshal(a)
	writeJSON(w, http.StatusOK, out)
}

func writeRetired(w http.ResponseWriter, path string, ret Retirement) {
	body := struct {
		Error        string `json:"error"`
		Reason       string `json:"reason"`
		Message      string `json:"message"`
		SunsetDate   string `json:"sunset_date"`
		Replacement  string `json:"replacement,omitempty"`
		MigrationURL string `json:"migration_url,omitempty"`
	}{"model_unavailable", ret.Reason, ret.Message, ret.SunsetDate, ret.Replacement, ret.MigrationURL}
	if body.Reason == "" {
		body.Reason = "retired"
	}
	if body.Message == "" {
		body.Message = path + " has been retired"
		if ret.Replacement != "" {
			body.Message += "; use " + ret.Replacement + " instead"
		}
	}
	if body.SunsetDate == "" {
		body.SunsetDate = "2026-01-01"
	}
	b, _ := json.Marshal(body)
	writeJSON(w, http.StatusGone, b)
}

// startLocked moves a job into a concurrency slot (queued) and starts its
// clock.
func (s *Server) startLocked(j *simJob) {
	j.status = krea.StatusQueued
	s.active++
	s.goLocked(func() { s.run(j) })
}

// run drives one job from queued to its end.
func (s *Server) run(j *simJob) {
	if !s.sleep(s.cfg.QueueTime, j.done) {
		return
	}
	s.mu.Lock()
	if j.status.IsTerminal() {
		s.mu.Unlock()
		return
	}
	j.status = krea.StatusProcessing
	if s.cfg.NonTerminalWebhooks {
		s.webhookLocked(j)
	}
	s.mu.Unlock()

	if !s.sleep(j.runTime, j.done) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if j.status.IsTerminal() {
		return
	}
	if j.willFail || s.rollLocked(s.faults.FailRate) {
		s.finishLocked(j, krea.StatusFailed, "")
	} else {
		s.finishLocked(j, krea.StatusCompleted, "")
	}
}

// finishLocked puts a job in a terminal state, frees its slot (starting the
// oldest backlogged job) and sends its webhook.
func (s *Server) finishLocked(j *simJob, st krea.Status, reason string) {
	wasActive := j.status != krea.StatusBacklogged
	j.status = st
	j.completed = time.Now().UTC().Truncate(time.Millisecond)
	if j.completed.Before(j.created) {
		j.completed = j.created
	}
	switch st {
	case krea.StatusCompleted:
		switch j.kind {
		case "train":
			j.styleID = uuid.NewString()
		case "video":
			j.urls = []string{s.newResultLocked(j, true)}
		default:
			j.urls = []string{s.newResultLocked(j, false)}
		}
	case krea.StatusFailed:
		if reason == "" {
			reason = "The generation failed (simulated by kreatest)"
		}
		j.failure = &krea.JobError{Code: "generation_failed", Message: reason}
	}
	close(j.done)
	if wasActive {
		s.active--
		for s.active < s.cfg.Concurrency && len(s.backlog) > 0 {
			next := s.backlog[0]
			s.backlog = s.backlog[1:]
			s.startLocked(next)
		}
	} else if i := slices.Index(s.backlog, j); i >= 0 {
		s.backlog = slices.Delete(s.backlog, i, i+1)
	}
	s.webhookLocked(j)
}

func (s *Server) handleGetJob(w http.ResponseWriter, id string) {
	s.mu.Lock()
	j, ok := s.jobs[id]
	var b []byte
	if ok {
		b = s.jsonLocked(j)
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "Job not found")
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// handleCancel cancels a job that has not ended. Krea's document lists
// only 200 and 404 for DELETE /jobs/{id}: a job that already ended is
// left as it is and answered 200 with its state, whose status tells the
// caller it was not cancelled.
func (s *Server) handleCancel(w http.ResponseWriter, id string) {
	s.mu.Lock()
	j, ok := s.jobs[id]
	if !ok {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "Job not found")
		return
	}
	if !j.status.IsTerminal() {
		s.finishLocked(j, krea.StatusCancelled, "")
	}
	b := s.jsonLocked(j)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, b)
}

var validStatus = map[krea.Status]bool{
	krea.StatusBacklogged: true, krea.StatusQueued: true, krea.StatusScheduled: true,
	krea.StatusProcessing: true, krea.StatusSampling: true, krea.StatusIntermediateComplete: true,
	krea.StatusCompleted: true, krea.StatusFailed: true, krea.StatusCancelled: true,
}

// handleList serves GET /jobs: newest first, jobs created strictly before
// cursor, next_cursor the created_at of the page's last job when more
// follow, else null.
func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := DefaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("Invalid query parameters: limit must be an integer from 1 to %d", MaxListLimit))
			return
		}
		limit = n
	}
	var cursor time.Time
	if v := q.Get("cursor"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "Invalid query parameters: cursor must be an ISO 8601 timestamp")
			return
		}
		cursor = t
	}
	status := krea.Status(q.Get("status"))
	if status != "" && !validStatus[status] {
		writeError(w, http.StatusBadRequest, "Invalid query parameters: unknown status")
		return
	}
	var types []string
	if v := q.Get("types"); v != "" {
		types = strings.Split(v, ",")
	}

	s.mu.Lock()
	items := []jobBody{}
	var next *string
	for i := len(s.order) - 1; i >= 0; i-- {
		j := s.order[i]
		if !cursor.IsZero() && !j.created.Before(cursor) {
			continue
		}
		if status != "" && j.status != status {
			continue
		}
		if types != nil && !slices.Contains(types, j.typ) {
			continue
		}
		if len(items) == limit {
			c := items[len(items)-1].CreatedAt
			next = &c
			break
		}
		items = append(items, s.bodyLocked(j))
	}
	s.mu.Unlock()

	out, _ := json.Marshal(struct {
		Items      []jobBody `json:"items"`
		NextCursor *string   `json:"next_cursor"`
	}{items, next})
	writeJSON(w, http.StatusOK, out)
}

// Finish forces a job that has not ended into a terminal state now (with
// reason as the failure message for StatusFailed), sending its webhook as
// usual. Tests use it to script outcomes without waiting.
func (s *Server) Finish(id string, st krea.Status, reason string) error {
	if !st.IsTerminal() {
		return fmt.Errorf("kreatest: %q is not a terminal status", st)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	switch {
	case !ok:
		return fmt.Errorf("kreatest: no job %q", id)
	case j.status.IsTerminal():
		return fmt.Errorf("kreatest: job %s is already %s", id, j.status)
	}
	s.finishLocked(j, st, reason)
	return nil
}

package service

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go/micro"

	"github.com/kreabus/kreabus/internal/clip"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// getJob answers krea.svc.jobs.get: a running job as Krea reports it now
// (GET /jobs/{id}, paced by the submitter's rate limit), a finished one as
// its terminal event stored it (no API call: it cannot change any more).
func (s *Service) getJob(ctx context.Context, r micro.Request) {
	var in events.JobRef
	if err := decode(r, &in); err != nil {
		s.answer(r, nil, err)
		return
	}
	info, err := s.job(ctx, in.JobID)
	s.answer(r, info, err)
}

func (s *Service) job(ctx context.Context, jobID string) (*events.JobInfo, error) {
	if !ledger.ValidID(jobID) {
		return nil, errorf(events.CodeBadRequest, "job_id %q is not a job ID", clip.String(jobID, quotedIDLen))
	}
	jr, err := s.d.Ledger.Job(ctx, jobID)
	if err != nil {
		// Only jobs kreabus made: the service is no proxy to the account.
		return nil, ledgerErr("job "+jobID, err)
	}
	out := &events.JobInfo{JobID: jobID, RequestID: jr.RequestID, Ledger: jobState(jr)}
	if jr.Terminal {
		out.From, out.Status = "ledger", jr.Status
		out.Job = s.terminalBody(ctx, jr.Status, jr.Events)
		return out, nil
	}
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	job, err := s.d.Krea.GetJob(ctx, jobID)
	if err != nil {
		return nil, kreaErr(jobID, err)
	}
	out.From, out.Status, out.Job = "krea", job.Status, job.Raw
	return out, nil
}

// terminalBody reads the body of the job's stored terminal event, nil when
// it cannot (the ledger's facts then stand alone).
func (s *Service) terminalBody(ctx context.Context, status krea.Status, refs []ledger.EventRef) json.RawMessage {
	want := events.JobSubject(status)
	for i := len(refs) - 1; i >= 0; i-- {
		if refs[i].Subject != want {
			continue
		}
		st, err := s.d.JS.Stream(ctx, events.StreamJobs)
		if err != nil {
			return nil
		}
		m, err := st.GetMsg(ctx, refs[i].Seq)
		if err != nil || m.Subject != want || !json.Valid(m.Data) {
			return nil
		}
		return m.Data
	}
	return nil
}

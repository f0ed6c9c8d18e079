package submitter

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/promreg"
	"github.com/kreabus/kreabus/pkg/events"
)

// Rejection reasons, the values of kreabus_submitter_rejections_total's
// reason label and of the Kind of a rejected event's body (events.Rejection).
const (
	RejectInvalid          = events.RejectInvalid          // the request failed validation
	RejectRefused          = events.RejectRefused          // the API answered 400/404/409/422
	RejectModelUnavailable = events.RejectModelUnavailable // the API answered 410
	RejectOutOfRetries     = events.RejectOutOfRetries     // retryable failures until KREABUS_MAX_DELIVERIES
	RejectUncertain        = events.RejectUncertain        // a call's outcome stayed unknown past KREABUS_UNCERTAIN_WAIT
)

type metrics struct {
	consumed    prometheus.Counter
	apiCalls    *prometheus.CounterVec
	apiDuration prometheus.Histogram
	retries     prometheus.Counter
	rejections  *prometheus.CounterVec
	paused      prometheus.Gauge
	pauses      prometheus.Counter
	inFlight    prometheus.Gauge
	limit       prometheus.Gauge
	submitted   prometheus.Counter
	ledgerErrs  prometheus.Counter
	republished prometheus.Counter
	uncertain   *prometheus.CounterVec
	extraJobs   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		consumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kreabus_submitter_requests_consumed_total",
			Help: "Request deliveries taken off KREA_REQUESTS (redeliveries included).",
		}),
		apiCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kreabus_submitter_api_calls_total",
			Help: "Krea API submissions by answer: the HTTP status, or network, timeout, malformed.",
		}, []string{"code"}),
		apiDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kreabus_submitter_api_duration_seconds",
			Help:    "Duration of Krea API submissions, whatever their answer.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kreabus_submitter_retries_total",
			Help: "Requests handed back for a delayed redelivery after a retryable failure.",
		}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kreabus_submitter_rejections_total",
			Help: "Requests that ended in krea.jobs.rejected, by reason.",
		}, []string{"reason"}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kreabus_submitter_paused",
			Help: "1 while submission is paused by Krea account errors (401/402/403).",
		}),
		pauses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kreabus_submitter_pauses_total",
			Help: "Times submission was paused by Krea account errors.",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kreabus_submitter_requests_in_flight",
			Help: "Requests being handled now (each holds at most one API call).",
		}),
		limit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kreabus_submitter_concurrency_limit",
			Help: "Current adaptive limit of requests in flight (halved on 429, regained on success).",
		}),
		submitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kreabus_submitter_submitted_total",
			Help: "Requests that became Krea jobs and were published to krea.jobs.submitted.",
		}),
		ledgerErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kreabus_submitter_ledger_errors_total",
			Help: "Ledger reads or writes that failed (a failed write after a successful call opens the pay-twice window).",
		}),
		republished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kreabus_submitter_republished_total",
			Help: "Redelivered requests already in the ledger: the submitted event was published again, the API not called.",
		}),
		uncertain: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kreabus_submitter_uncertain_total",
			Help: "Calls whose outcome was unknown (a job may exist), and how they were settled, by outcome.",
		}, []string{"outcome"}),
	}
	extra := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kreabus_extra_jobs_total",
		Help: "Events of second (paid) jobs of a request stored, marked Kreabus-Extra-Job, by who stored them.",
	}, []string{"source"})
	for _, o := range []string{UncertainNew, UncertainNoJob, UncertainLinked, UncertainWaiting, UncertainResent, UncertainRejected} {
		m.uncertain.WithLabelValues(o)
	}
	// Every kind at 0 from the start, so a rejection-rate alert has series
	// to divide before the first rejection.
	for _, k := range []string{RejectInvalid, RejectRefused, RejectModelUnavailable, RejectOutOfRetries, RejectUncertain} {
		m.rejections.WithLabelValues(k)
	}
	if reg == nil {
		m.extraJobs = extra.WithLabelValues("submitter")
		return m, nil
	}
	// A collector already registered (a submitter restarted in the same
	// process) is reused so its counts continue.
	var err error
	for _, p := range []*prometheus.Counter{&m.consumed, &m.retries, &m.pauses, &m.submitted, &m.ledgerErrs, &m.republished} {
		if *p, err = promreg.Register(reg, *p); err != nil {
			return nil, err
		}
	}
	for _, p := range []*prometheus.Gauge{&m.paused, &m.inFlight, &m.limit} {
		if *p, err = promreg.Register(reg, *p); err != nil {
			return nil, err
		}
	}
	if extra, err = promreg.Register(reg, extra); err != nil {
		return nil, err
	}
	m.extraJobs = extra.WithLabelValues("submitter")
	for _, p := range []**prometheus.CounterVec{&m.apiCalls, &m.rejections, &m.uncertain} {
		if *p, err = promreg.Register(reg, *p); err != nil {
			return nil, err
		}
	}
	if m.apiDuration, err = promreg.Register(reg, m.apiDuration); err != nil {
		return nil, err
	}
	return m, nil
}

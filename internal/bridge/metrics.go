package bridge

import (
	"encoding/json"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes: the outcome label of kreabus_bridge_webhooks_total.
const (
	OutcomeStored               = "stored"
	OutcomeDuplicate            = "duplicate"
	OutcomeUnauthorized         = "unauthorized"
	OutcomeForbidden            = "forbidden"
	OutcomeBadRequest           = "bad_request"
	OutcomeTooLarge             = "too_large"
	OutcomeUnsupportedMediaType = "unsupported_media_type"
	OutcomeMethodNotAllowed     = "method_not_allowed"
	OutcomeNotFound             = "not_found"
	OutcomeUnavailable          = "unavailable"
	OutcomeTooManyRequests      = "too_many_requests"
)

// ExtraJobsMetric counts second jobs of a request: Krea was paid twice.
// The bridge counts them with source="webhook", the submitter with
// source="submitter".
const ExtraJobsMetric = "kreabus_extra_jobs_total"

type metrics struct {
	webhooks   *prometheus.CounterVec
	duplicates prometheus.Counter
	publish    prometheus.Histogram
	lookup     prometheus.Histogram
	fromCache  prometheus.Counter
	fromLedger prometheus.Counter
	extraJobs  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kreabus_bridge_webhooks_total",
			Help: "Webhook requests answered, by outcome and HTTP status code.",
		}, []string{"outcome", "code"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kreabus_bridge_duplicates_total",
			Help: "Webhooks answered 200 with duplicate:true (already stored).",
		}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kreabus_bridge_publish_duration_seconds",
			Help:    "Time from publishing a job event to its JetStream PubAck (or failure).",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16), // 0.25 ms to 8 s
		}),
		lookup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kreabus_bridge_ledger_lookup_duration_seconds",
			Help:    "Time to learn a webhook's job owner from the job ledger (cache or key reads).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16), // 50 µs to 1.6 s
		}),
	}
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kreabus_bridge_ledger_lookups_total",
		Help: "Webhook owner lookups, by where the answer came from: cache (memory) or ledger (key reads).",
	}, []string{"source"})
	m.fromCache, m.fromLedger = lookups.WithLabelValues("cache"), lookups.WithLabelValues("ledger")
	extra := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: ExtraJobsMetric,
		Help: "Events of second (paid) jobs of a request stored, marked Kreabus-Extra-Job, by who stored them.",
	}, []string{"source"})
	for _, c := range []prometheus.Collector{m.webhooks, m.duplicates, m.publish, m.lookup, lookups, extra} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.extraJobs = extra.WithLabelValues("webhook")
	return m, nil
}

// register adds the gauges read from b's limits when scraped: nothing is
// counted twice on the hot path.
func (m *metrics) register(reg prometheus.Registerer, b *Bridge) {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kreabus_bridge_requests_in_flight",
			Help: "Webhook requests being handled (bounded by KREABUS_MAX_IN_FLIGHT).",
		}, func() float64 { return float64(b.inFlight.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kreabus_bridge_body_bytes_in_flight",
			Help: "Body bytes held by webhooks being handled (bounded by KREABUS_BODY_BUDGET).",
		}, func() float64 { return float64(b.bodies.used.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kreabus_bridge_connections_open",
			Help: "Open webhook connections (bounded by KREABUS_MAX_CONNS).",
		}, func() float64 { return float64(b.conns.open.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kreabus_bridge_connections_refused_total",
			Help: "Webhook connections closed at accept because KREABUS_MAX_CONNS were open.",
		}, func() float64 { return float64(b.conns.refused.Load()) }),
	} {
		// A second bridge on one registry (tests) keeps the first's.
		_ = reg.Register(c)
	}
}

// answer is a fixed HTTP answer: code, outcome and body resolved once, so
// the hot path neither formats nor looks up label values.
type answer struct {
	code    int
	outcome string
	msg     string
	body    []byte
	counter prometheus.Counter
}

func (m *metrics) answer(code int, outcome, msg string) *answer {
	a := &answer{code: code, outcome: outcome, msg: msg}
	if msg != "" {
		a.body = errorBody(msg)
	}
	a.counter = m.webhooks.WithLabelValues(outcome, strconv.Itoa(code))
	return a
}

// errorBody is {"error":msg}, the body of every error answer.
func errorBody(msg string) []byte {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	return append(b, '\n')
}

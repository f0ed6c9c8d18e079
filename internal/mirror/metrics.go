package mirror

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/promreg"
)

// metrics are the mirror's Prometheus series.
type metrics struct {
	jobs            *prometheus.CounterVec
	objects         *prometheus.CounterVec
	bytes           prometheus.Counter
	retries         prometheus.Counter
	downloadSeconds prometheus.Histogram
	jobSeconds      prometheus.Histogram
}

// newMetrics registers the series on reg (nil: unregistered). A second
// mirror in the same process (tests, the local pipeline) shares them.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kreabus_mirror_jobs_total",
			Help: "Completed jobs handled, by outcome: mirrored (every result stored), partial (some results failed), duplicate (mirrored event already stored), retry (store or bus failed: delivered again), invalid.",
		}, []string{"outcome"}),
		objects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kreabus_mirror_objects_total",
			Help: "Result URLs handled, by outcome: stored (downloaded), existing (already complete in the bucket), error (reported in the mirrored event).",
		}, []string{"outcome"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kreabus_mirror_bytes_total",
			Help: "Bytes of results stored in the bucket.",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kreabus_mirror_download_retries_total",
			Help: "Download attempts that failed with a 5xx answer or a network error and were tried again.",
		}),
		downloadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kreabus_mirror_download_duration_seconds",
			Help:    "Time to copy one result into the bucket, download and store.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16), // 10 ms to 5.5 min
		}),
		jobSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kreabus_mirror_job_duration_seconds",
			Help:    "Time from a completed event's delivery to its mirrored event's PubAck.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}),
	}
	var errs [6]error
	m.jobs, errs[0] = promreg.Register(reg, m.jobs)
	m.objects, errs[1] = promreg.Register(reg, m.objects)
	m.bytes, errs[2] = promreg.Register(reg, m.bytes)
	m.retries, errs[3] = promreg.Register(reg, m.retries)
	m.downloadSeconds, errs[4] = promreg.Register(reg, m.downloadSeconds)
	m.jobSeconds, errs[5] = promreg.Register(reg, m.jobSeconds)
	return m, errors.Join(errs[:]...)
}

package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// eventLogMetrics are the event log's: how long appends take, how far the
// live tail lags behind the log, how many deliveries wait.
type eventLogMetrics struct {
	reg     *prometheus.Registry
	appends *prometheus.HistogramVec
	lag     prometheus.Gauge
}

func newEventLogMetrics(reg *prometheus.Registry) eventLogMetrics {
	m := eventLogMetrics{reg: reg}
	m.appends = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "leadstream_append_duration_seconds", Help: "Time from appending to the event log to its acknowledgement, by source (a poller page is one append).",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
	}, []string{"source"})
	m.lag = prometheus.NewGauge(prometheus.GaugeOpts{Name: "leadstream_live_tail_lag", Help: "Events in the log this replica's live tail has not read yet."})
	reg.MustRegister(m.appends, m.lag)
	for _, s := range []string{"POLLER", "WEBHOOK"} {
		m.appends.WithLabelValues(s)
	}
	return m
}

// Appended records one acknowledged append of n events.
func (m *Metrics) Appended(d time.Duration, n int, source string) {
	m.log.appends.WithLabelValues(source).Observe(d.Seconds())
	m.ingested.WithLabelValues(source).Add(float64(n))
}

// TailLag records how many events the live tail has yet to read.
func (m *Metrics) TailLag(n uint64) { m.log.lag.Set(float64(n)) }

// PendingDeliveries reports the callback deliveries not finished yet
// (waiting, in flight or waiting for a retry) from count, read at scrape.
func (m *Metrics) PendingDeliveries(count func() (int, error)) {
	m.log.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "leadstream_deliveries_pending", Help: "Callback deliveries waiting, in flight or waiting for a retry (-1: the log did not answer).",
	}, func() float64 {
		n, err := count()
		if err != nil {
			return -1
		}
		return float64(n)
	}))
}

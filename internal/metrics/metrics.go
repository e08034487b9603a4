// Package metrics exposes the gateway's Prometheus metrics at /metrics. Each
// Metrics has its own registry, so tests and several apps in one process do
// not collide.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds every metric of one gateway.
type Metrics struct {
	reg        *prometheus.Registry
	webhooks   *prometheus.CounterVec
	ingested   *prometheus.CounterVec
	deliveries *prometheus.CounterVec
	marketo    *prometheus.CounterVec
	polls      *prometheus.HistogramVec
	log        eventLogMetrics
}

// New registers the metrics.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.webhooks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "leadstream_webhooks_total", Help: "Webhook requests by HTTP status."}, []string{"status"})
	m.ingested = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "leadstream_events_ingested_total", Help: "Events appended to the event log, by source."}, []string{"source"})
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "leadstream_delivery_attempts_total", Help: "Callback delivery attempts by outcome."}, []string{"outcome"})
	m.marketo = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "leadstream_marketo_calls_total", Help: "Marketo API calls by path and result code."}, []string{"path", "result"})
	m.polls = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "leadstream_poll_duration_seconds", Help: "Duration of Marketo polls.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 12)}, []string{"outcome"})
	m.reg.MustRegister(m.webhooks, m.ingested, m.deliveries, m.marketo, m.polls,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.log = newEventLogMetrics(m.reg)
	// Series that exist from the start, so dashboards and rate() see zeros
	// rather than nothing.
	for _, s := range []string{"202", "400", "401", "404", "409", "413"} {
		m.webhooks.WithLabelValues(s)
	}
	for _, s := range []string{"POLLER", "WEBHOOK"} {
		m.ingested.WithLabelValues(s)
	}
	for _, s := range []string{"delivered", "failed_attempt", "gave_up"} {
		m.deliveries.WithLabelValues(s)
	}
	for _, s := range []string{"ok", "error"} {
		m.polls.WithLabelValues(s)
	}
	return m
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Webhook counts one webhook answer.
func (m *Metrics) Webhook(status int) { m.webhooks.WithLabelValues(strconv.Itoa(status)).Inc() }

// Delivery counts one delivery outcome.
func (m *Metrics) Delivery(outcome string) { m.deliveries.WithLabelValues(outcome).Inc() }

// MarketoCall counts one Marketo call.
func (m *Metrics) MarketoCall(path, result string) { m.marketo.WithLabelValues(path, result).Inc() }

// Poll records one poll's duration.
func (m *Metrics) Poll(_ string, d time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.polls.WithLabelValues(outcome).Observe(d.Seconds())
}

// Subscriptions reports the live subscription count from count.
func (m *Metrics) Subscriptions(count func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "leadstream_live_subscriptions", Help: "Live GraphQL subscriptions."},
		func() float64 { return float64(count()) }))
}

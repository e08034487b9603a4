package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// InstanceSnapshot is what the instance metrics are computed from, read
// afresh at each scrape.
type InstanceSnapshot struct {
	Valid, Invalid, Disabled int
	// SincePollSuccess has, for each instance the poller should be
	// polling, the time since its last successful poll (since its creation
	// when it never had one).
	SincePollSuccess []time.Duration
}

// PollAgeBuckets bound the poll-age histogram. Ages are reported as one
// histogram (plus the oldest as a gauge), not a series per instance, so the
// number of series stays fixed however many instances there are.
var PollAgeBuckets = []float64{30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600}

// Instances reports instance metrics from snap at each scrape; a failing
// snapshot is passed to onErr and reports nothing.
func (m *Metrics) Instances(snap func(context.Context) (InstanceSnapshot, error), onErr func(error)) {
	m.reg.MustRegister(&instanceCollector{snap: snap, onErr: onErr})
}

var (
	instancesDesc = prometheus.NewDesc("leadstream_instances", "Instances by state: valid, invalid (Marketo refused the credentials) or disabled.", []string{"state"}, nil)
	pollAgeDesc   = prometheus.NewDesc("leadstream_poll_success_age_seconds",
		"Seconds since each polled instance's last successful poll (since its creation if none), as a histogram over instances.", nil, nil)
	pollAgeMaxDesc = prometheus.NewDesc("leadstream_poll_success_age_max_seconds", "The largest of leadstream_poll_success_age_seconds (0 with no polled instance).", nil, nil)
)

type instanceCollector struct {
	snap  func(context.Context) (InstanceSnapshot, error)
	onErr func(error)
}

func (c *instanceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- instancesDesc
	ch <- pollAgeDesc
	ch <- pollAgeMaxDesc
}

func (c *instanceCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := c.snap(ctx)
	if err != nil {
		if c.onErr != nil {
			c.onErr(err)
		}
		return
	}
	for state, n := range map[string]int{"valid": s.Valid, "invalid": s.Invalid, "disabled": s.Disabled} {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(n), state)
	}
	buckets := make(map[float64]uint64, len(PollAgeBuckets))
	var sum, maxAge float64
	for _, d := range s.SincePollSuccess {
		v := d.Seconds()
		sum += v
		maxAge = max(maxAge, v)
		for _, b := range PollAgeBuckets {
			if v <= b {
				buckets[b]++
			}
		}
	}
	ch <- prometheus.MustNewConstHistogram(pollAgeDesc, uint64(len(s.SincePollSuccess)), sum, buckets)
	ch <- prometheus.MustNewConstMetric(pollAgeMaxDesc, prometheus.GaugeValue, maxAge)
}

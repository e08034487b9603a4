package metrics

import "github.com/prometheus/client_golang/prometheus"

// Leases reports, from count, how many Marketo REST host leases this
// replica holds: the hosts it polls.
func (m *Metrics) Leases(count func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "leadstream_leases_held", Help: "Marketo REST hosts this replica holds the polling lease of.",
	}, func() float64 { return float64(count()) }))
}

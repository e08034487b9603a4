package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestMetricsExposed(t *testing.T) {
	m := New()
	m.Subscriptions(func() int { return 3 })
	m.Webhook(202)
	m.Appended(time.Millisecond, 1, "WEBHOOK")
	m.Delivery("delivered")
	m.MarketoCall("/rest/v1/activities.json", "606")
	m.Poll("i1", 2*time.Second, errors.New("x"))
	m.Appended(3*time.Millisecond, 300, "POLLER")
	m.TailLag(7)
	m.PendingDeliveries(func() (int, error) { return 12, nil })
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Body)
	for _, want := range []string{
		`leadstream_webhooks_total{status="202"} 1`,
		`leadstream_webhooks_total{status="401"} 0`,
		`leadstream_events_ingested_total{source="WEBHOOK"} 1`,
		`leadstream_delivery_attempts_total{outcome="delivered"} 1`,
		`leadstream_marketo_calls_total{path="/rest/v1/activities.json",result="606"} 1`,
		`leadstream_poll_duration_seconds_count{outcome="error"} 1`,
		`leadstream_live_subscriptions 3`,
		`leadstream_events_ingested_total{source="POLLER"} 300`,
		`leadstream_append_duration_seconds_count{source="POLLER"} 1`,
		`leadstream_append_duration_seconds_count{source="WEBHOOK"} 1`,
		`leadstream_live_tail_lag 7`,
		`leadstream_deliveries_pending 12`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

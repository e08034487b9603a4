package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestLeasesHeld(t *testing.T) {
	m := New()
	n := 2
	m.Leases(func() int { return n })
	for _, want := range []string{"leadstream_leases_held 2", "leadstream_leases_held 0"} {
		w := httptest.NewRecorder()
		m.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(w.Body)
		if !strings.Contains(string(body), want) {
			t.Fatalf("metrics lack %q", want)
		}
		n = 0
	}
}

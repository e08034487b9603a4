package app_test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/leadstream/leadstream/internal/app/apptest"
)

func metricsText(t *testing.T, g *apptest.Gateway) string {
	t.Helper()
	resp, err := http.Get(g.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func metricValue(text, series string) (float64, bool) {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

func countLines(logs, substr string) int {
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// What an operator sees at the default log level and on /metrics: the
// lifecycle of an instance, its polls, the effective poll interval when
// the configured one is below the floor, instances by state and the age of
// the last successful poll (one histogram, not a series per instance).
func TestOperatorViewOfAnInstance(t *testing.T) {
	fm := fakeMarketo(t)
	fm.StartGenerator(t.Context(), 20)
	g := apptest.Start(t, "", map[string]string{"LOG_LEVEL": "info", "POLLER_MIN_INTERVAL": "300ms"})

	cfg := fullConfig(fm)
	cfg["event.notification.enabled"] = "true"
	cfg["event.poller.refresh_interval"] = "50ms"
	var out struct {
		CreateInstance struct {
			ID                 string
			PollInterval       *string
			PollIntervalNotice *string
		}
	}
	g.MustDo(t, apptest.AuthA, `mutation($in: CreateInstanceInput!) { createInstance(input: $in) { id pollInterval pollIntervalNotice } }`,
		map[string]any{"in": map[string]any{"connector": map[string]any{"key": "marketo"}, "name": "ops", "configuration": cfg}}, &out)
	in := out.CreateInstance
	if in.PollInterval == nil || *in.PollInterval != "300ms" || in.PollIntervalNotice == nil ||
		!strings.Contains(*in.PollIntervalNotice, "POLLER_MIN_INTERVAL") || !strings.Contains(*in.PollIntervalNotice, `"50ms"`) {
		t.Fatalf("pollInterval %v, notice %v: want 300ms and a notice naming the floor", deref(in.PollInterval), deref(in.PollIntervalNotice))
	}

	waitFor(t, "a poll summary in the log and the poll age on /metrics", func() bool {
		m := metricsText(t, g)
		n, _ := metricValue(m, "leadstream_poll_success_age_seconds_count")
		v, _ := metricValue(m, `leadstream_instances{state="valid"}`)
		return n == 1 && v == 1 && strings.Contains(g.Logs.String(), `msg="poller: polled"`)
	})
	m := metricsText(t, g)
	if age, ok := metricValue(m, "leadstream_poll_success_age_max_seconds"); !ok || age > 60 {
		t.Errorf("poll age max %v (%v), want a few seconds at most", age, ok)
	}
	if strings.Contains(m, in.ID) {
		t.Error("/metrics names an instance: label cardinality must not grow with instances")
	}

	g.MustDo(t, apptest.AuthA, `mutation($id: ID!) { updateInstance(id: $id, input: {disabled: true}) { id } }`, map[string]any{"id": in.ID}, nil)
	waitFor(t, "the disabled instance on /metrics", func() bool {
		v, _ := metricValue(metricsText(t, g), `leadstream_instances{state="disabled"}`)
		return v == 1
	})
	g.MustDo(t, apptest.AuthA, `mutation($id: ID!) { deleteInstance(id: $id) }`, map[string]any{"id": in.ID}, nil)

	logs := g.Logs.String()
	for _, want := range []string{`msg="instance created" instance=` + in.ID, `msg="instance updated" instance=` + in.ID, `msg="instance deleted" instance=` + in.ID} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	// Polls every 300 ms for a while: summarised, not a line per poll.
	if n := countLines(logs, "poller: polled"); n > 3 {
		t.Errorf("%d poll lines in the log, want a summary per minute at most", n)
	}
	if strings.Contains(logs, clientSecret) {
		t.Error("the log holds the Marketo client secret")
	}
}

// Many failed callback attempts make a few log lines, even at debug level.
func TestDeliveryFailuresAggregatedInTheLog(t *testing.T) {
	fm := fakeMarketo(t)
	srv, got := receiver(t, 1<<30) // fails every request
	g := apptest.Start(t, "", nil) // LOG_LEVEL=debug
	cfg := fullConfig(fm)
	cfg["event.notification.enabled"] = "true"
	cfg["event.notification.callback.url"] = srv.URL
	id, hook := newInstance(t, g, apptest.AuthA, cfg)
	for i := range 5 {
		if st, body := apptest.Post(t, hook, "application/json", []byte(`{"n":`+strconv.Itoa(i)+`}`), nil); st != http.StatusAccepted {
			t.Fatalf("webhook: %d %v", st, body)
		}
	}
	waitFor(t, "30 failed attempts", func() bool { return len(got()) >= 30 })
	logs := g.Logs.String()
	if n := countLines(logs, "notify: callback deliveries failing"); n < 1 || n > 2 {
		t.Errorf("%d delivery-failure lines for %d failed attempts, want 1 or 2:\n%s", n, len(got()), logs)
	}
	if !strings.Contains(logs, "instance="+id) {
		t.Error("the failure line does not name the instance")
	}
	if n := countLines(logs, "notify:"); n > 4 {
		t.Errorf("%d notify lines at debug level for %d attempts: a line per attempt", n, len(got()))
	}
}

// Messages to callers carry no Go package prefix.
func TestErrorMessagesPlain(t *testing.T) {
	g := apptest.Start(t, "", nil)
	r := g.Do(t, "User nope, Organization nope", `{ connectors { key } }`, nil)
	if r.Code() != "UNAUTHENTICATED" || len(r.Errors) == 0 {
		t.Fatalf("answer %s", r.Raw)
	}
	if msg := r.Errors[0].Message; regexp.MustCompile(`^[a-z]+: `).MatchString(msg) {
		t.Errorf("message %q starts with a package prefix", msg)
	}
}

// Start-up says whether an organization exists and how to get a new pair.
func TestStartupSaysWhetherAnOrganizationExists(t *testing.T) {
	dir := t.TempDir()
	noSecrets := map[string]string{"ORGANIZATION_SECRET": "", "USER_SECRET": "", "LOG_LEVEL": "info"}
	g := apptest.Start(t, dir, noSecrets)
	g.Stop()
	if !strings.Contains(g.Logs.String(), "created the first organization") {
		t.Errorf("first start: %s", g.Logs.String())
	}
	g = apptest.Start(t, dir, noSecrets)
	g.Stop()
	if l := g.Logs.String(); !strings.Contains(l, "an organization exists") || !strings.Contains(l, "ORGANIZATION_SECRET and USER_SECRET") {
		t.Errorf("restart: %s", l)
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestMain lets the test binary serve as the client process too, as the
// bench binary does.
func TestMain(m *testing.M) {
	if isChild() {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// TestQuickRun runs the whole benchmark end to end at tiny sizes and checks
// that every figure was measured.
func TestQuickRun(t *testing.T) {
	o := DefaultOptions(true)
	o.Subs, o.Idle, o.Posters, o.FanoutPosters = 20, []IdleSet{{200, 1}, {200, 2}}, []int{1, 4}, 4
	o.HistoryEvents, o.IngestWarm, o.IngestDur = 20_000, 200*time.Millisecond, time.Second
	o.FanoutWarm, o.FanoutDur, o.LatencyDur = 300*time.Millisecond, time.Second, time.Second
	o.JSONPath = filepath.Join(t.TempDir(), "bench.json")
	o.Log = testWriter{t}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range res.Errors {
		t.Error(e)
	}
	want := map[string]bool{
		"ingest_c1": true, "ingest_c4": true, "ingest_best": true, "fanout_events_in": true,
		"fanout_msgs_delivered": true, "latency_rate": true, "latency_p50": true, "latency_p99": true,
		"latency_max": true, "idle_rss_200": true, "idle_goroutines_200": true,
		"idle_rss_400_200x2": true, "idle_goroutines_400_200x2": true, "idle_rss_conn_400_200x2": true,
		"history_first": true, "history_after": true, "replay": true,
	}
	for _, f := range res.Figures {
		delete(want, f.Key)
		if !(f.Value > 0) {
			t.Errorf("%s (%s) = %v, want > 0", f.Key, f.Name, f.Value)
		}
		if f.BaselineName != "" && !(f.Baseline > 0 && f.Ratio > 0) {
			t.Errorf("%s: baseline %v, ratio %v, want both > 0", f.Key, f.Baseline, f.Ratio)
		}
		if f.Result != "PASS" && f.Result != "MISS" && f.Result != "info" {
			t.Errorf("%s: result %q", f.Key, f.Result)
		}
	}
	for k := range want {
		t.Errorf("figure %s missing", k)
	}
	if len(res.Details.RawIngest) != 2 || res.Details.RawIngest[0].PerSec <= 0 || res.Details.MessageBytes <= 0 {
		t.Errorf("details: raw ingest %+v, message %d bytes", res.Details.RawIngest, res.Details.MessageBytes)
	}
	for _, side := range []FanoutDetails{res.Details.Gateway, res.Details.Raw} {
		if !side.Max.Drained || side.Max.Ended > 0 || side.Latency.DeliveredFrac < 0.5 {
			t.Errorf("events were lost: %+v", side)
		}
	}
	if err := res.WriteJSON(o.JSONPath); err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	res.PrintTable(&table)
	t.Log("\n" + table.String())
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

package logsummary

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// The first occurrence is logged at once, then one summary per period
// however many occur, and Flush writes what is pending.
func TestSummary(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	s := New(log, slog.LevelInfo, "things", time.Minute)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	lines := func() []string { return strings.Split(strings.TrimSpace(buf.String()), "\n") }

	s.Add("a", map[string]int64{"n": 1}, "err", "first")
	if l := lines(); len(l) != 1 || !strings.Contains(l[0], `instance=a n=1 err=first`) {
		t.Fatalf("first occurrence: %q", l)
	}
	for i := range 199 {
		now = now.Add(100 * time.Millisecond)
		s.Add([]string{"a", "b"}[i%2], map[string]int64{"n": 1}, "err", "again")
	}
	if l := lines(); len(l) != 1 {
		t.Fatalf("within the period: %d lines, want 1: %q", len(l), l)
	}
	now = now.Add(time.Minute)
	s.Add("c", map[string]int64{"n": 1}, "err", "late")
	l := lines()
	if len(l) != 2 || !strings.Contains(l[1], `msg="things (summary)"`) || !strings.Contains(l[1], "instances=3 n=200 last_err=late") {
		t.Fatalf("after the period: %q", l)
	}
	now = now.Add(time.Second)
	s.Add("a", map[string]int64{"n": 1})
	s.Flush()
	if l := lines(); len(l) != 3 || !strings.Contains(l[2], "instances=1 n=1") {
		t.Fatalf("flush: %q", l)
	}
	s.Flush()
	if l := lines(); len(l) != 3 {
		t.Fatalf("a second flush wrote: %q", l)
	}
	// After a quiet period the next one is logged at once again.
	now = now.Add(2 * time.Minute)
	s.Add("z", map[string]int64{"n": 1})
	if l := lines(); len(l) != 4 || !strings.Contains(l[3], "instance=z") {
		t.Fatalf("after quiet: %q", l)
	}
}

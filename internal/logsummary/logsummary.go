// Package logsummary turns a stream of similar occurrences (polls, failed
// callback attempts) into few log lines: the first occurrence after a quiet
// spell is logged at once, the rest are counted and logged as one summary
// line per period. Nothing runs in the background: a summary is written by
// the Add that finds the period over, or by Flush.
package logsummary

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Summary counts occurrences of one kind.
type Summary struct {
	log   *slog.Logger
	level slog.Level
	msg   string
	every time.Duration
	now   func() time.Time

	mu        sync.Mutex
	since     time.Time // start of the counted period; zero when nothing is pending
	lastLine  time.Time
	counts    map[string]int64
	instances map[string]struct{}
	last      []any
}

// New returns a Summary that writes msg at level at most about once per
// every (plus the first occurrence after a quiet period).
func New(log *slog.Logger, level slog.Level, msg string, every time.Duration) *Summary {
	return &Summary{log: log, level: level, msg: msg, every: every, now: time.Now, counts: map[string]int64{}, instances: map[string]struct{}{}}
}

// Add records one occurrence for an instance: counts to add and the
// attributes of this occurrence (the latest are shown in the summary).
func (s *Summary) Add(instance string, counts map[string]int64, attrs ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Sub(s.lastLine) >= s.every && s.since.IsZero() {
		// First one after a quiet period: say it now.
		s.lastLine = now
		args := append([]any{"instance", instance}, flat(counts)...)
		s.log.Log(context.Background(), s.level, s.msg, append(args, attrs...)...)
		return
	}
	if s.since.IsZero() {
		s.since = now
	}
	for k, v := range counts {
		s.counts[k] += v
	}
	if instance != "" {
		s.instances[instance] = struct{}{}
	}
	s.last = attrs
	if now.Sub(s.lastLine) >= s.every {
		s.flushLocked(now)
	}
}

// Flush writes the pending summary, if any.
func (s *Summary) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushLocked(s.now())
}

func (s *Summary) flushLocked(now time.Time) {
	if s.since.IsZero() {
		return
	}
	args := []any{"period", now.Sub(s.since).Round(time.Second).String(), "instances", len(s.instances)}
	args = append(args, flat(s.counts)...)
	args = append(args, prefixed("last_", s.last)...)
	s.log.Log(context.Background(), s.level, s.msg+" (summary)", args...)
	s.lastLine, s.since, s.last = now, time.Time{}, nil
	s.counts, s.instances = map[string]int64{}, map[string]struct{}{}
}

func flat(counts map[string]int64) []any {
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		out = append(out, k, counts[k])
	}
	return out
}

// prefixed renames key/value attributes so the summary says they are the
// latest occurrence's.
func prefixed(p string, attrs []any) []any {
	out := make([]any, 0, len(attrs))
	for i := 0; i+1 < len(attrs); i += 2 {
		if k, ok := attrs[i].(string); ok {
			out = append(out, p+k, attrs[i+1])
		}
	}
	return out
}

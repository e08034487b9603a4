package marketotest

import (
	"maps"
	"slices"
	"time"
)

// Fault is a failure the fake answers REST calls with, so tests can see how
// a client copes with Marketo misbehaving. Set one of Code, HTTPStatus or
// Malformed (checked in that order: HTTPStatus, Malformed, Code); Delay may
// be combined with any of them, and alone makes a slow but normal answer.
type Fault struct {
	// Code is a Marketo error code ("606", "607", "1003", …) answered with
	// HTTP 200 and success:false, as Marketo does.
	Code string
	// HTTPStatus answers with this HTTP status and an HTML body (e.g. 503).
	HTTPStatus int
	// Malformed answers HTTP 200 with a truncated JSON body.
	Malformed bool
	// Body, when set, replaces the HTML body of an HTTPStatus fault and the
	// message of a Code fault: tests put a marker there that must never
	// reach a caller of the gateway.
	Body string
	// Delay holds the answer back this long (or until the client gives up).
	Delay time.Duration
	// Times is how many REST calls the fault applies to; 0 means every call
	// until ClearFaults.
	Times int
	// Path, when set, limits the fault to calls of that path
	// (e.g. "/rest/v1/activities.json"); other calls are answered normally
	// and do not use up Times.
	Path string
}

type queuedFault struct {
	Fault
	left int
}

// SetFault queues f behind any faults already queued: it applies to the
// next f.Times REST calls after those are used up.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &queuedFault{Fault: f, left: f.Times})
}

// ClearFaults drops every queued fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// takeFault uses up one call of the fault at the head of the queue, if it
// applies to path. s.mu must be held.
func (s *Server) takeFault(path string) (Fault, bool) {
	if len(s.faults) == 0 {
		return Fault{}, false
	}
	f := s.faults[0]
	if f.Path != "" && f.Path != path {
		return Fault{}, false
	}
	if f.Times > 0 {
		f.left--
		if f.left <= 0 {
			s.faults = s.faults[1:]
		}
	}
	return f.Fault, true
}

// Stats counts what the fake has served.
type Stats struct {
	// RESTCalls is every request under /rest/, including those answered
	// with an error (601/602 too).
	RESTCalls int
	// RESTCallsByPath splits RESTCalls by URL path.
	RESTCallsByPath map[string]int
	// ByResult splits RESTCalls by answer: "ok", a Marketo error code such
	// as "601" or "606", "http_503" and other statuses, "malformed", or
	// "canceled" when the client gave up before the answer.
	ByResult map[string]int
	// TokenRequests counts identity requests, failed ones included.
	TokenRequests int
	// TokensHeld is the token requests HoldTokens holds now;
	// TokensAbandoned those whose client left while held.
	TokensHeld      int
	TokensAbandoned int
	// InFlight is the REST calls being answered now; MaxInFlight the most
	// there ever were at once.
	InFlight    int
	MaxInFlight int

	starts []time.Time // start of every REST call, in order
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.RESTCallsByPath = maps.Clone(s.stats.RESTCallsByPath)
	st.ByResult = maps.Clone(s.stats.ByResult)
	st.starts = slices.Clone(s.stats.starts)
	return st
}

// ResetStats zeroes the counters (calls in flight stay counted).
func (s *Server) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = Stats{
		RESTCallsByPath: map[string]int{},
		ByResult:        map[string]int{},
		InFlight:        s.stats.InFlight,
		MaxInFlight:     s.stats.InFlight,
	}
}

// MaxInWindow is the most REST calls that started within any span of time
// shorter than window: what a Marketo limit of "N calls per window" checks.
func (st Stats) MaxInWindow(window time.Duration) int {
	best := 0
	lo := 0
	for hi, t := range st.starts {
		for t.Sub(st.starts[lo]) >= window {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

package marketo

import (
	"errors"
	"fmt"
	"time"
	_ "time/tzdata" // the quota resets at midnight US Central, also on hosts without tzdata
)

// Sentinel errors classify every failure of the client so that callers can
// decide what to do with a Marketo instance without knowing Marketo's codes.
var (
	// ErrInvalidCredentials: the identity endpoint refused the client id and
	// secret (HTTP 400/401), or the URLs are unusable. Mark the instance
	// invalid until the user reconnects it.
	ErrInvalidCredentials = errors.New("marketo: invalid credentials")
	// ErrUnreachable: Marketo could not be reached or did not answer with
	// JSON (network error, DNS, timeout, garbage), retries included.
	ErrUnreachable = errors.New("marketo: unreachable")
	// ErrRateLimited: Marketo still answered 606 (calls per 20 s) or 615
	// (concurrent calls) after backing off and retrying.
	ErrRateLimited = errors.New("marketo: rate limited")
	// ErrQuotaExceeded: the daily quota is used up (607). The error is a
	// *QuotaError that says when it resets; stop calling until then.
	ErrQuotaExceeded = errors.New("marketo: daily quota exceeded")
	// ErrBadRequest: Marketo rejected the request (1003 and the other codes
	// that retrying cannot fix), or the answer was unusable. Not retried;
	// record it on the instance.
	ErrBadRequest = errors.New("marketo: bad request")
	// ErrTransient: Marketo kept failing temporarily (604, 608, 611, 713,
	// 502, HTTP 5xx) through every retry; try again later.
	ErrTransient = errors.New("marketo: transient error")
)

// APIError is an error Marketo reported in the "errors" list of its answer.
// Reach it with errors.As to see the code.
type APIError struct {
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("api error %s: %s", e.Code, e.Message)
}

// QuotaError is returned when the daily quota is exhausted; it matches
// ErrQuotaExceeded with errors.Is and carries when the quota resets.
type QuotaError struct {
	// ResetAt is the next midnight in America/Chicago, when Marketo resets
	// the daily quota.
	ResetAt time.Time
	// Err is Marketo's error, when it sent one.
	Err *APIError
}

func (e *QuotaError) Error() string {
	msg := fmt.Sprintf("%v until %s", ErrQuotaExceeded, e.ResetAt.Format(time.RFC3339))
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrQuotaExceeded) and errors.As(err, **APIError) work.
func (e *QuotaError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrQuotaExceeded}
	}
	return []error{ErrQuotaExceeded, e.Err}
}

// central is US Central time, where Marketo's daily quota resets. It is
// set once at start-up and never changed.
var central = loadCentral()

func loadCentral() *time.Location {
	if loc, err := time.LoadLocation("America/Chicago"); err == nil {
		return loc
	}
	return time.FixedZone("CST", -6*60*60)
}

// quotaResetAfter is the first midnight in US Central time after t.
func quotaResetAfter(t time.Time) time.Time {
	c := t.In(central)
	return time.Date(c.Year(), c.Month(), c.Day()+1, 0, 0, 0, 0, central)
}

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
// Reach it with errors.As to see the code. Its text is the code and the
// code's documented meaning: what Marketo wrote in the message is the
// upstream's words and is not repeated to callers.
type APIError struct {
	Code    string
	Message string // as Marketo sent it: for the debug log only
}

func (e *APIError) Error() string {
	if m := codeMeanings[e.Code]; m != "" {
		return fmt.Sprintf("Marketo error %s (%s)", e.Code, m)
	}
	return fmt.Sprintf("Marketo error %s", e.Code)
}

// codeMeanings are Marketo's documented REST error codes.
var codeMeanings = map[string]string{
	"502": "bad gateway", "601": "access token invalid", "602": "access token expired", "603": "access denied",
	"604": "request timed out", "605": "HTTP method not supported", "606": "rate limit exceeded",
	"607": "daily quota reached", "608": "API temporarily unavailable", "609": "invalid JSON",
	"610": "requested resource not found", "611": "system error", "612": "invalid content type",
	"613": "invalid multipart request", "614": "invalid subscription", "615": "concurrent access limit reached",
	"616": "invalid subscription type", "701": "a required value is blank", "702": "no data found",
	"703": "feature not enabled for the subscription", "704": "invalid date format", "709": "business rule violation",
	"710": "parent folder not found", "711": "incompatible folder type", "713": "transient error",
	"719": "lock wait timeout", "1001": "invalid value", "1002": "missing value for a required parameter",
	"1003": "invalid data", "1004": "lead not found", "1005": "lead already exists", "1006": "field not found",
	"1007": "multiple leads match", "1008": "access denied to partition", "1013": "object not found",
	"1029": "too many jobs in queue", "1035": "unsupported filter type",
}

// described is an error whose text is the gateway's own words; the cause
// stays reachable for errors.Is and errors.As, but its text (which may
// quote what an upstream answered) is never part of Error().
type described struct {
	msg   string
	cause error
}

func (d *described) Error() string { return d.msg }
func (d *described) Unwrap() error { return d.cause }

func describe(cause error, format string, args ...any) error {
	return &described{msg: fmt.Sprintf(format, args...), cause: cause}
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

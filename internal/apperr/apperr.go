// Package apperr carries the contract's error codes from the package that
// knows what went wrong to the one place (the GraphQL error presenter) that
// turns them into responses.
package apperr

import (
	"errors"
	"fmt"
)

// Codes, as clients see them in extensions.code.
const (
	Unauthenticated = "UNAUTHENTICATED"
	Forbidden       = "FORBIDDEN"
	NotFound        = "NOT_FOUND"
	BadUserInput    = "BAD_USER_INPUT"
	Upstream        = "UPSTREAM_ERROR"
	Internal        = "INTERNAL"
	// LimitExceeded: a request too large, deep or costly, or a cap on
	// connections or subscriptions reached; the message names the limit.
	LimitExceeded = "LIMIT_EXCEEDED"
	// RateLimited: too many failed attempts from one address; retry later.
	RateLimited = "RATE_LIMITED"
	// SlowSubscriber ends a subscription that fell behind; extensions.lastCursor says where to resume.
	SlowSubscriber = "SLOW_SUBSCRIBER"
	// Ended ends a subscription whose instance was deleted or disabled.
	Ended = "SUBSCRIPTION_ENDED"
	// CursorExpired refuses an after older than the event log keeps; extensions.oldestCursor says where history starts.
	CursorExpired = "CURSOR_EXPIRED"
)

// Error is an error a client may see: its Message is safe to show.
type Error struct {
	Code    string
	Message string
	Missing []string          // BAD_USER_INPUT: every missing configuration key
	Invalid map[string]string // BAD_USER_INPUT: malformed key → why
	Extra   map[string]any    // further extensions
	Err     error             // cause, for the log only
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an Error with a code and a message for the client.
func New(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an Error with a code, a message for the client and a cause for the log.
func Wrap(code string, cause error, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: cause}
}

// As returns the Error in err's chain, if any.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

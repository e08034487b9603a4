package rest

import (
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strconv"

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/auth"
)

// statusOf is the REST transport's one error table: the contract's codes
// (internal/apperr) to HTTP statuses. Codes not listed are 500.
var statusOf = map[string]int{
	apperr.BadUserInput:    http.StatusBadRequest,
	apperr.Unauthenticated: http.StatusUnauthorized,
	apperr.Forbidden:       http.StatusForbidden,
	apperr.NotFound:        http.StatusNotFound,
	apperr.Ended:           http.StatusConflict, // the instance is disabled or gone for this operation
	apperr.RateLimited:     http.StatusTooManyRequests,
	apperr.LimitExceeded:   http.StatusTooManyRequests, // a cap reached
	apperr.Upstream:        http.StatusBadGateway,
}

// errorJSON is every error answer: message in plain words, the contract's
// code, and for bad configuration every missing key and every malformed one.
type errorJSON struct {
	Message string        `json:"message"`
	Code    string        `json:"code"`
	Missing []string      `json:"missing,omitempty"`
	Invalid []invalidJSON `json:"invalid,omitempty"`
}

type invalidJSON struct {
	Key     string `json:"key"`
	Message string `json:"message"`
}

func (api *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	body := errorJSON{Code: apperr.Internal, Message: "internal error"}
	if e, ok := apperr.As(err); ok {
		body.Code, body.Message, body.Missing = e.Code, e.Message, e.Missing
		keys := make([]string, 0, len(e.Invalid))
		for k := range e.Invalid {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			body.Invalid = append(body.Invalid, invalidJSON{Key: k, Message: e.Invalid[k]})
		}
	} else if errors.Is(err, auth.ErrUnauthenticated) {
		body.Code, body.Message = apperr.Unauthenticated, auth.UnauthenticatedMessage
	}
	status, ok := statusOf[body.Code]
	if !ok {
		status = http.StatusInternalServerError
		body.Code, body.Message = apperr.Internal, "internal error"
		api.log.Error("rest: internal error", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if e, ok := apperr.As(err); ok && status == http.StatusTooManyRequests {
		if secs, ok := e.Extra["retryAfter"].(int); ok {
			w.Header().Set("Retry-After", strconv.Itoa(secs))
		}
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `User realm="leadstream", Organization, Element`)
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// Package webhook receives Marketo webhooks at /events/marketo/{id} and
// ingests each as one event. Marketo waits 30 s and never retries, so the
// handler answers as soon as the event is durable.
package webhook

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
)

// MaxBody is the largest body accepted.
const MaxBody = 1 << 20

// MaxDepth is how deeply a JSON body may nest: deeper documents cost every
// later reader (renderers, clients) stack and time, and no Marketo template
// comes close.
const MaxDepth = 64

// Instances finds the instance a webhook is for.
type Instances interface {
	Lookup(ctx context.Context, id string) (store.Instance, error)
}

// Ingester stores an event and publishes it.
type Ingester interface {
	Ingest(ctx context.Context, d events.Draft) (events.Result, error)
}

// Handler returns the receiver. observe, if set, is told each answer's status.
func Handler(inst Instances, ing Ingester, log *slog.Logger, observe func(status int)) http.Handler {
	if observe == nil {
		observe = func(int) {}
	}
	fail := func(w http.ResponseWriter, status int, msg string) {
		observe(status)
		writeJSON(w, status, map[string]string{"error": msg})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			fail(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		id, ok := decodeID(r.PathValue("id"))
		if !ok {
			fail(w, http.StatusBadRequest, "the path must end in the base64 of the instance id")
			return
		}
		in, err := inst.Lookup(r.Context(), id)
		if errors.Is(err, store.ErrNotFound) {
			fail(w, http.StatusNotFound, "no such instance")
			return
		}
		if err != nil {
			log.Error("webhook: lookup instance", "err", err)
			fail(w, http.StatusInternalServerError, "could not look the instance up; try again")
			return
		}
		secret := r.Header.Get("X-Webhook-Secret")
		if secret == "" {
			secret = r.URL.Query().Get("secret")
		}
		if secret == "" || !secrets.Equal(secrets.Hash(secret), in.WebhookSecretHash) {
			fail(w, http.StatusUnauthorized, "missing or wrong webhook secret: send it as X-Webhook-Secret or ?secret=")
			return
		}
		if in.Disabled {
			fail(w, http.StatusConflict, "the instance is disabled")
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				fail(w, http.StatusRequestEntityTooLarge, "body is over 1 MiB")
				return
			}
			fail(w, http.StatusBadRequest, "could not read the body")
			return
		}
		payload, msg := parseBody(r.Header.Get("Content-Type"), body)
		if msg != "" {
			fail(w, http.StatusBadRequest, msg)
			return
		}
		d := events.Draft{
			InstanceID: in.ID, OrgID: in.OrgID, Source: events.SourceWebhook,
			EventType: "WEBHOOK", ObjectType: "webhook", Payload: payload,
		}
		if cb, ok := in.Get(instance.KeyCallbackURL); ok && cb.Value != "" {
			d.Notify = true
		}
		res, err := ing.Ingest(r.Context(), d)
		if err != nil {
			log.Error("webhook: ingest", "instance", in.ID, "err", err)
			fail(w, http.StatusServiceUnavailable, "the event could not be stored; send it again")
			return
		}
		observe(http.StatusAccepted)
		writeAccepted(w, res.Event)
	})
}

// decodeID accepts standard or URL-safe base64, with or without padding.
func decodeID(s string) (string, bool) {
	if s == "" {
		return "", false
	}
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.StdEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) > 0 && utf8.Valid(b) {
			return string(b), true
		}
	}
	return "", false
}

// parseBody returns the event payload: a JSON body as sent, or a form body
// as a JSON object (repeated fields become arrays).
func parseBody(contentType string, body []byte) (events.JSON, string) {
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt == "application/x-www-form-urlencoded" {
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, "form body is malformed: " + err.Error()
		}
		obj := make(map[string]any, len(vals))
		for k, v := range vals {
			if len(v) == 1 {
				obj[k] = v[0]
			} else {
				obj[k] = v
			}
		}
		b, _ := json.Marshal(obj)
		return b, ""
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil, "body is empty; send JSON or a form"
	}
	if !json.Valid(body) {
		return nil, "body is not valid JSON (with Marketo's JSON token encoding, string tokens arrive quoted)"
	}
	if tooDeep(body, MaxDepth) {
		return nil, "body nests deeper than 64 levels"
	}
	return body, ""
}

// tooDeep reports whether valid JSON nests arrays and objects deeper than max.
func tooDeep(body []byte, max int) bool {
	depth, inString, escaped := 0, false, false
	for _, c := range body {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			if depth++; depth > max {
				return true
			}
		case c == ']' || c == '}':
			depth--
		}
	}
	return false
}

// writeAccepted answers {"id":…,"cursor":…} without encoding/json, on
// the path every webhook takes.
func writeAccepted(w http.ResponseWriter, e *events.Event) {
	b := make([]byte, 0, 96)
	b = append(b, `{"id":`...)
	b = strconv.AppendQuote(b, e.ID)
	b = append(b, `,"cursor":`...)
	b = strconv.AppendQuote(b, e.Cursor())
	b = append(b, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

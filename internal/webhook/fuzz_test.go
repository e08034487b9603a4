package webhook

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"strings"
	"testing"
)

// FuzzParseBody: whatever arrives, the parser answers a payload or a
// message, never both; a payload is valid JSON no deeper than MaxDepth, a
// JSON body is kept byte for byte, and the message never quotes the body.
// Seeds are in testdata/fuzz/FuzzParseBody.
func FuzzParseBody(f *testing.F) {
	f.Add("application/json", []byte(`{"first_name":"Ada","email":"ada@example.com"}`))
	f.Add("application/x-www-form-urlencoded", []byte("a=1&a=2&b=%zz"))
	f.Add("application/json", []byte(strings.Repeat("[", 65)+strings.Repeat("]", 65)))
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		payload, msg := parseBody(contentType, body)
		if (payload == nil) == (msg == "") {
			t.Fatalf("payload %q and message %q", payload, msg)
		}
		if msg != "" {
			if len(body) > 8 && strings.Contains(msg, string(body)) {
				t.Fatalf("message quotes the body: %q", msg)
			}
			return
		}
		if !json.Valid(payload) {
			t.Fatalf("payload is not JSON: %q", payload)
		}
		if d := depth(t, payload); d > MaxDepth {
			t.Fatalf("payload nests %d deep", d)
		}
		if mt, _, _ := mime.ParseMediaType(contentType); mt != "application/x-www-form-urlencoded" && !bytes.Equal(payload, body) {
			t.Fatalf("JSON body changed: %q -> %q", body, payload)
		}
	})
}

// depth measures nesting with the standard decoder, as a second opinion
// on tooDeep.
func depth(t *testing.T, b []byte) int {
	dec := json.NewDecoder(bytes.NewReader(b))
	d, maxD := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return maxD
		}
		if err != nil {
			t.Fatalf("decoding valid JSON: %v", err)
		}
		switch tok {
		case json.Delim('['), json.Delim('{'):
			d++
			maxD = max(maxD, d)
		case json.Delim(']'), json.Delim('}'):
			d--
		}
	}
}

func TestTooDeep(t *testing.T) {
	for _, tt := range []struct {
		body string
		deep bool
	}{
		{strings.Repeat("[", 64) + strings.Repeat("]", 64), false},
		{strings.Repeat("[", 65) + strings.Repeat("]", 65), true},
		{`{"a":"` + strings.Repeat("[", 100) + `"}`, false},
		{`{"a":"\"` + strings.Repeat("{", 100) + `"}`, false},
		{strings.Repeat(`{"a":`, 65) + "1" + strings.Repeat("}", 65), true},
	} {
		if got := tooDeep([]byte(tt.body), MaxDepth); got != tt.deep {
			t.Errorf("tooDeep(%.40q…) = %v", tt.body, got)
		}
	}
}

package webhook

import (
	"encoding/base64"
	"testing"
)

func TestDecodeID(t *testing.T) {
	id := "2f0c9a8e-1b1e-4c9b-9d0f-3a5c7e9b1d2f?"
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		got, ok := decodeID(enc.EncodeToString([]byte(id)))
		if !ok || got != id {
			t.Errorf("decodeID(%s) = %q %v", enc.EncodeToString([]byte(id)), got, ok)
		}
	}
	for _, bad := range []string{"", "not*base64!", base64.StdEncoding.EncodeToString([]byte{0xff, 0xfe})} {
		if _, ok := decodeID(bad); ok {
			t.Errorf("decodeID(%q) accepted", bad)
		}
	}
}

func TestParseBody(t *testing.T) {
	tests := []struct {
		ctype, body, want string
		ok                bool
	}{
		{"application/json", `{"first_name":"Ada", "n": 1.50}`, `{"first_name":"Ada", "n": 1.50}`, true},
		{"application/json; charset=utf-8", `[1,2]`, `[1,2]`, true},
		{"", `{"a":1}`, `{"a":1}`, true},
		{"application/x-www-form-urlencoded", `a=1&b=x+y&b=z`, `{"a":"1","b":["x y","z"]}`, true},
		{"application/json", `{"first_name":Ada}`, "", false},
		{"application/json", "  ", "", false},
		{"application/x-www-form-urlencoded", `a=%zz`, "", false},
	}
	for _, tt := range tests {
		got, msg := parseBody(tt.ctype, []byte(tt.body))
		if (msg == "") != tt.ok || string(got) != tt.want {
			t.Errorf("parseBody(%q, %q) = %s, %q", tt.ctype, tt.body, got, msg)
		}
	}
}

package marketotest

import (
	"testing"
	"time"
)

func TestMaxInWindow(t *testing.T) {
	base := time.Now()
	at := func(ms ...int) []time.Time {
		out := make([]time.Time, len(ms))
		for i, m := range ms {
			out[i] = base.Add(time.Duration(m) * time.Millisecond)
		}
		return out
	}
	tests := []struct {
		name   string
		starts []time.Time
		window time.Duration
		want   int
	}{
		{"none", nil, time.Second, 0},
		{"one", at(0), time.Second, 1},
		{"all inside", at(0, 100, 999), time.Second, 3},
		{"exactly a window apart are not together", at(0, 1000), time.Second, 1},
		{"densest span wins", at(0, 500, 1200, 1300, 1400, 2300), time.Second, 4},
		{"same instant", at(5, 5, 5), time.Millisecond, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (Stats{starts: tt.starts}).MaxInWindow(tt.window); got != tt.want {
				t.Fatalf("MaxInWindow = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestPageTokenRoundTrip(t *testing.T) {
	for _, c := range [][2]int{{0, 0}, {1, 2}, {123456, 99}} {
		tok := encodePageToken(c[0], c[1])
		pos, page, ok := decodePageToken(tok)
		if !ok || pos != c[0] || page != c[1] {
			t.Fatalf("%v -> %q -> %d %d %v", c, tok, pos, page, ok)
		}
	}
	for _, bad := range []string{"", "!!!", pageTokenEncoding.EncodeToString([]byte("lsfake:1")), pageTokenEncoding.EncodeToString([]byte("other:1:2")), pageTokenEncoding.EncodeToString([]byte("lsfake:-1:0"))} {
		if _, _, ok := decodePageToken(bad); ok {
			t.Fatalf("%q decoded", bad)
		}
	}
}

package throttle_test

import (
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/throttle"
)

func TestFailures(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	f := throttle.New(3, time.Minute, func() time.Time { return now })
	for range 3 {
		if _, blocked := f.Blocked("a"); blocked {
			t.Fatal("blocked too early")
		}
		f.Fail("a")
	}
	wait, blocked := f.Blocked("a")
	if !blocked || wait != time.Minute {
		t.Fatalf("after 3 failures: %v %v", wait, blocked)
	}
	if _, blocked := f.Blocked("b"); blocked {
		t.Fatal("another address is blocked")
	}
	now = now.Add(61 * time.Second)
	if _, blocked := f.Blocked("a"); blocked {
		t.Fatal("still blocked after the window")
	}
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"1.2.3.4:5678": "1.2.3.4", "[::ffff:1.2.3.4]:1": "1.2.3.4",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64", "[2001:db8:1:2:ffff::1]:1": "2001:db8:1:2::/64",
	} {
		if got := throttle.ClientKey(in); got != want {
			t.Errorf("ClientKey(%s) = %s, want %s", in, got, want)
		}
	}
}

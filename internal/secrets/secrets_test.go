package secrets

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestBoxRoundTripAndWrongKey(t *testing.T) {
	a, _ := NewBox(bytes.Repeat([]byte{1}, 32))
	b, _ := NewBox(bytes.Repeat([]byte{2}, 32))
	sealed := a.Seal("s3cret")
	if bytes.Contains([]byte(sealed), []byte("s3cret")) {
		t.Fatal("sealed value contains the plain text")
	}
	if a.Seal("s3cret") == sealed {
		t.Fatal("two seals of one value are equal: nonce reused")
	}
	got, err := a.Open(sealed)
	if err != nil || got != "s3cret" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	for _, bad := range []string{sealed[:len(sealed)-2], "plain", "v1:!!!"} {
		if _, err := a.Open(bad); err != ErrCorrupt {
			t.Fatalf("Open(%q) err = %v", bad, err)
		}
	}
	if _, err := b.Open(sealed); err != ErrCorrupt {
		t.Fatalf("wrong key opened the value: %v", err)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	k1, err := LoadOrCreateKey(dir)
	if err != nil || len(k1) != 32 {
		t.Fatalf("create: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, "secret.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", fi.Mode().Perm(), err)
	}
	k2, err := LoadOrCreateKey(dir)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("reload gave another key: %v", err)
	}
}

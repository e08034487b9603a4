package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// secretPrefix marks a Standard Webhooks secret whose rest is base64.
const secretPrefix = "whsec_"

// Sign computes the Standard Webhooks 1.0 "webhook-signature" value, so any of
// that spec's receiver libraries verifies what we send. A "whsec_<base64>" key
// signs with the decoded bytes; any other key (or a whsec_ key whose rest is
// not base64) signs with its own bytes, as the contract says.
func Sign(key, id string, ts time.Time, body []byte) string {
	mac := hmac.New(sha256.New, keyBytes(key))
	mac.Write([]byte(id))
	mac.Write([]byte{'.'})
	mac.Write([]byte(strconv.FormatInt(ts.Unix(), 10)))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func keyBytes(key string) []byte {
	if rest, ok := strings.CutPrefix(key, secretPrefix); ok && rest != "" {
		if b, err := base64.StdEncoding.DecodeString(rest); err == nil {
			return b
		}
		if b, err := base64.RawStdEncoding.DecodeString(rest); err == nil {
			return b
		}
	}
	return []byte(key)
}

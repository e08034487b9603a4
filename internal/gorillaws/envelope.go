package gorillaws

import (
	"encoding/json"
	"reflect"
	"sync"
)

// gqlgen hands WriteJSON its message envelopes, {payload, id, type}, whose
// payload it has already marshalled. Encoding the envelope with
// encoding/json would scan and re-compact that payload once more for every
// subscriber; writing the three fields by hand does not. The envelope types
// are unexported, so they are recognised by shape: a pointer to a struct
// whose first three fields are Payload json.RawMessage, ID string and a
// string-kinded Type, tagged as gqlgen tags them.

var rawMessageType = reflect.TypeFor[json.RawMessage]()

type envelopeShape struct {
	ok bool
}

// shapes caches, per type, whether it is an envelope. Types are few and
// fixed (gqlgen's two message types), so the map stays tiny.
var shapes sync.Map // reflect.Type → envelopeShape

func isEnvelope(t reflect.Type) bool {
	if s, ok := shapes.Load(t); ok {
		return s.(envelopeShape).ok
	}
	ok := t.Kind() == reflect.Struct && t.NumField() >= 3 &&
		t.Field(0).Name == "Payload" && t.Field(0).Type == rawMessageType && t.Field(0).Tag.Get("json") == "payload,omitempty" &&
		t.Field(1).Name == "ID" && t.Field(1).Type.Kind() == reflect.String && t.Field(1).Tag.Get("json") == "id,omitempty" &&
		t.Field(2).Name == "Type" && t.Field(2).Type.Kind() == reflect.String && t.Field(2).Tag.Get("json") == "type"
	for i := 3; ok && i < t.NumField(); i++ {
		ok = !t.Field(i).IsExported() // anything else must be invisible to encoding/json
	}
	shapes.Store(t, envelopeShape{ok: ok})
	return ok
}

// appendEnvelope writes v as encoding/json would, if v is an envelope.
func appendEnvelope(buf []byte, v any) ([]byte, bool) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || !isEnvelope(rv.Type().Elem()) {
		return buf, false
	}
	rv = rv.Elem()
	// gqlgen made the payload with json.Marshal: it is valid and compact.
	payload := rv.Field(0).Bytes()
	buf = append(buf, '{')
	if len(payload) > 0 {
		buf = append(buf, `"payload":`...)
		buf = append(buf, payload...)
		buf = append(buf, ',')
	}
	if id := rv.Field(1).String(); id != "" {
		buf = append(buf, `"id":`...)
		buf = appendString(buf, id)
		buf = append(buf, ',')
	}
	buf = append(buf, `"type":`...)
	buf = appendString(buf, rv.Field(2).String())
	return append(buf, '}'), true
}

func appendString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x7f || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(buf, b...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

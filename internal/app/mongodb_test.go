package app_test

import (
	"testing"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
	"github.com/leadstream/leadstream/internal/store"
)

// With MONGODB_URI the gateway uses that server (here a FerretDB started on
// its own, standing in for MongoDB) and with NATS_URL that NATS server for
// the event log, through the same code, keeps nothing in DATA_DIR, and
// needs SECRET_KEY to decrypt after a restart.
func TestExternalMongoDBAndNATS(t *testing.T) {
	uri, stop, err := store.StartEmbedded(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	fm := fakeMarketo(t)
	// The event log is external too (NATS_URL): a gateway keeps nothing of
	// its own in its DATA_DIR but the secret key it is not using here.
	env := map[string]string{"MONGODB_URI": uri, "MONGODB_DATABASE": "ls_ext", "SECRET_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
		"NATS_URL": eventlogtest.StartServer(t)}
	g := apptest.Start(t, "", env)
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))
	if st, _ := apptest.Post(t, hook, "application/json", []byte(`{"a":1}`), nil); st != 202 {
		t.Fatalf("webhook %d", st)
	}
	g.Stop()

	// Another gateway, another DATA_DIR, the same database and key.
	g2 := apptest.Start(t, "", env)
	if n := eventCount(t, g2, id); n != 1 {
		t.Fatalf("%d events through the external store and log, want 1", n)
	}
	var upd struct{ UpdateInstance instanceAnswer }
	g2.MustDo(t, apptest.AuthA, `mutation($id: ID!, $c: JSON) { updateInstance(id: $id, input: {configuration: $c}) { id valid } }`,
		map[string]any{"id": id, "c": map[string]any{"marketo.rest.url": fm.RESTURL() + "/"}}, &upd)
	if !upd.UpdateInstance.Valid {
		t.Fatal("credentials did not decrypt with SECRET_KEY on another gateway")
	}
}

package main

// The ingest baseline: a plain net/http server on loopback that takes the
// very webhook POSTs the gateway takes (the body read within the same
// 1 MiB limit and checked to be JSON, a 202 with an id and a cursor) and
// stores nothing. Gateway ÷ this is what storing durably (the event log's
// acknowledgement) and the gateway's own checks cost per webhook.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

type rawIngest struct {
	srv *http.Server
	ln  net.Listener
	URL string
	seq atomic.Int64
}

func startRawIngest() (*rawIngest, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &rawIngest{ln: ln, URL: "http://" + ln.Addr().String() + "/events/marketo/raw?secret=x"}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /events/marketo/{id}", func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, 1<<20))
		if err != nil || !json.Valid(body) {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]string{"id": uuid.NewString(), "cursor": fmt.Sprintf("%012d", r.seq.Add(1))})
	})
	r.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	go func() {
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Println("raw ingest server:", err)
		}
	}()
	return r, nil
}

func (r *rawIngest) Close() { _ = r.srv.Close() }

// Package playground serves GraphiQL, bundled from npm packages into dist/
// by `make assets` (see package.json) and embedded, so the binary needs no
// node and the page loads nothing from outside.
package playground

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed all:dist
var dist embed.FS

// Policy is the page's content security policy. Scripts, workers and
// connections are limited to the gateway itself. Monaco (GraphiQL's
// editor) adds <style> elements at run time and supports no nonce, hence
// 'unsafe-inline' for styles only; its fonts and icons come inlined as data: URLs.
const Policy = "default-src 'none'; script-src 'self'; worker-src 'self'; connect-src 'self'; " +
	"style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the page at any path ending in "/" (the route it is
// mounted on) and its assets under playground/ beside it. Asset names
// carry a content hash, so they are cached for good; the page is not.
func Handler() http.Handler {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		panic(err)
	}
	assets := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", Policy)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		p := r.URL.Path
		if strings.HasSuffix(p, "/") {
			h.Set("Content-Type", "text/html; charset=utf-8")
			h.Set("Cache-Control", "no-cache")
			_, _ = w.Write(index)
			return
		}
		i := strings.LastIndex(p, "/playground/")
		if i < 0 {
			http.NotFound(w, r)
			return
		}
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
		r2 := r.Clone(r.Context())
		r2.URL.Path = p[i:]
		assets.ServeHTTP(w, r2)
	})
}

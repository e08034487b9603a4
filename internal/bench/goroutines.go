package main

import (
	"bytes"
	"fmt"
	"runtime"
	"slices"
	"strings"
)

// goroutinesByCreator counts this process's goroutines by the function that
// started them ("created by" in their stacks), so an idle set's extra
// goroutines can be named, not only counted.
func goroutinesByCreator() map[string]int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]int{}
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		creator := "(no creator)"
		if i := bytes.Index(g, []byte("\ncreated by ")); i >= 0 {
			line := g[i+len("\ncreated by "):]
			if j := bytes.IndexAny(line, " \n"); j >= 0 {
				line = line[:j]
			}
			creator = string(line)
		}
		out[creator]++
	}
	return out
}

// writersInFlight counts goroutines writing to a gateway websocket: the
// writer exists only while a connection has frames queued, as when the
// shared keep-alive tick has just queued a ping on every connection.
func writersInFlight() int {
	return goroutinesByCreator()[writerCreator]
}

const writerCreator = "github.com/leadstream/leadstream/internal/subscribe.(*conn).startWriterLocked"

// creatorDiff names the creators whose goroutine counts grew, most first.
func creatorDiff(before, after map[string]int, top int) string {
	type d struct {
		name string
		n    int
	}
	var ds []d
	for k, v := range after {
		if v > before[k] {
			ds = append(ds, d{k, v - before[k]})
		}
	}
	slices.SortFunc(ds, func(a, b d) int { return b.n - a.n })
	var parts []string
	for i, x := range ds {
		if i == top {
			break
		}
		name := x.name
		if i := strings.LastIndex(name, "/"); i >= 0 {
			name = name[i+1:]
		}
		parts = append(parts, fmt.Sprintf("%d %s", x.n, name))
	}
	return strings.Join(parts, ", ")
}

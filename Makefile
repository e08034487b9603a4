# Leadstream: `make run` starts the gateway, `make test` runs every test.
GO      ?= go
CLIENTS := internal/e2e/clients

.PHONY: run demo fake-marketo test test-go clients generate lint build bench

## run: start the gateway on the embedded store (./data), GraphiQL at http://localhost:8080/
run:
	$(GO) run .

## demo: the gateway plus a fake Marketo producing live lead activities
demo:
	$(GO) run . -demo

## fake-marketo: only a fake Marketo on 127.0.0.1:9090, to provision against from `make run`
fake-marketo:
	$(GO) run . -fake-marketo 127.0.0.1:9090

## test: the whole suite (Go with -race, and the third-party JS clients)
test: clients
	$(GO) test -race -count=1 -timeout 15m ./...

## clients: install the JS clients the end-to-end tests drive (from the lock file)
clients:
	@if [ ! -d $(CLIENTS)/node_modules ] || [ $(CLIENTS)/package-lock.json -nt $(CLIENTS)/node_modules ]; then \
		npm ci --prefix $(CLIENTS) --no-audit --no-fund --loglevel=error; fi

## generate: regenerate gqlgen code from schema/*.graphql
generate:
	$(GO) run github.com/99designs/gqlgen generate

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## build: build the binary into bin/
build:
	$(GO) build -o bin/leadstream .

## bench: end-to-end load benchmark and micro-benchmarks
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./internal/events/ ./internal/gorillaws/
	$(GO) run ./internal/bench

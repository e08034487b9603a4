# Leadstream: `make run` starts the gateway, `make test` runs every test.
GO      ?= go
CLIENTS := internal/e2e/clients
PLAYGROUND := internal/playground

# Development only: let Marketo URLs name the fake Marketo on 127.0.0.1 and
# callbacks reach local receivers. Production leaves both unset (README,
# "Security").
DEV_EGRESS := MARKETO_HOSTS='*.mktorest.com,127.0.0.1,localhost' EGRESS_ALLOW=127.0.0.0/8,::1

.PHONY: run demo fake-marketo test test-go clients browser-deps assets generate lint build bench

FAKE_MARKETO_ADDR ?= 127.0.0.1:9090

# run, demo and fake-marketo build bin/leadstream first and then exec it, so
# the compile is announced and Ctrl-C reaches the gateway itself: a clean
# stop exits 0 (go run would exit 1).

## run: start the gateway on the embedded store (./data), GraphiQL at http://localhost:8080/ (polls may be 5 s apart)
run: build
	@$(DEV_EGRESS) POLLER_MIN_INTERVAL=$${POLLER_MIN_INTERVAL:-5s} exec ./bin/leadstream

## demo: the gateway plus a fake Marketo producing live lead activities
demo: build
	@$(DEV_EGRESS) exec ./bin/leadstream -demo

## fake-marketo: only a fake Marketo on $(FAKE_MARKETO_ADDR) (default 127.0.0.1:9090), to provision against from `make run`
fake-marketo: build
	@exec ./bin/leadstream -fake-marketo $(FAKE_MARKETO_ADDR)

## test: the whole suite (Go with -race, the third-party JS clients, Chromium on GraphiQL and the connect page)
test: clients
	$(GO) test -race -count=1 -timeout 15m ./...
	$(GO) test -run '^$$' -fuzz '^FuzzParseBody$$' -fuzztime 3s ./internal/webhook/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 3s ./internal/auth/

## browser-deps: Debian's chromium package, which the browser tests drive (apt-get, as root or with sudo)
browser-deps:
	@if [ -x /usr/bin/chromium ]; then /usr/bin/chromium --version; else \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium; fi

## assets: rebuild GraphiQL into internal/playground/dist (committed, embedded) from its lock file
assets:
	npm ci --prefix $(PLAYGROUND) --no-audit --no-fund --loglevel=error
	npm run --prefix $(PLAYGROUND) --silent build

## clients: install the JS clients (and playwright-core) the end-to-end tests drive (from the lock file)
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
	@echo "building bin/leadstream…"
	@$(GO) build -o bin/leadstream .

## bench: end-to-end load benchmark and micro-benchmarks
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./internal/events/
	$(GO) run ./internal/bench

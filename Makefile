# meshx — see README.md. The two commands a fresh Debian machine needs:
#   ./scripts/demo.sh   (make demo)   the demo: a Consul agent on loopback, meshx, a request through the mesh
#   ./scripts/test.sh   (make test)   every test: unit, integration (real Consul), system (real systemd, iptables)

GO ?= go
export GOTOOLCHAIN := local

.PHONY: build test unit demo bench vet lint clean

build:
	$(GO) build -o bin/ ./cmd/meshx-init ./cmd/meshx-proxy

test:
	./scripts/test.sh

# Unit tests only: no root, no Consul, no containers.
unit:
	$(GO) test -race ./internal/...

vet:
	$(GO) vet ./...

# gofmt, go mod tidy and staticcheck (pinned in tools/staticcheck); test runs it too.
lint:
	./scripts/lint.sh

demo:
	./scripts/demo.sh

bench:
	./scripts/bench.sh

clean:
	rm -rf bin dist .cache

include mk/package.mk

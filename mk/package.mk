# `make package`: builds dist/meshx_<version>_amd64.deb with nfpm, pinned in
# tools/nfpm and built once into $(MESHX_CACHE) by scripts/build-tool.sh.
# `make package-lint` runs lintian on it (no errors or warnings allowed).
# `make rpm` builds the RPM for RHEL-family images from the same nfpm config,
# dist/meshx-<version>-1.x86_64.rpm; `make rpm-lint` runs rpmlint on it (no
# errors or warnings allowed; packaging/rpmlintrc says why each filter is
# there). Each prints the package's path as its last line.
# Included by the Makefile.
#
# The package's binaries are a release build of ./cmd/meshx-init and
# ./cmd/meshx-proxy made here, hardened the way Debian checks for (PIE, full
# RELRO, BIND_NOW through the external linker), stripped, and stamped with
# MESHX_VERSION (internal/version); `make build`'s bin/ is left alone and
# reports a development version. The man pages and bash completions are
# generated from the command definitions (internal/cli/gendocs).
#
# Knobs: MESHX_VERSION (default 0.1.0~git<commit date>.<hash>), MESHX_CACHE.

MESHX_CACHE ?= /var/cache/meshx
NFPM_VERSION := $(shell awk '$$1 == "require" && $$2 == "github.com/goreleaser/nfpm/v2" {print $$3}' tools/nfpm/go.mod)
NFPM := $(MESHX_CACHE)/nfpm-$(NFPM_VERSION)/nfpm
MESHX_VERSION ?= 0.1.0~git$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d 2>/dev/null || echo 0)
# The staging directory packaging/nfpm.yaml takes the binaries, docs and changelog from.
PACKAGE_STAGE := .cache/pkgroot
DEB := dist/meshx_$(MESHX_VERSION)_amd64.deb
# -X: the version `meshx-init --version` and `meshx-proxy --version` print.
PACKAGE_LDFLAGS := -linkmode=external -extldflags '-Wl,-z,relro,-z,now' \
	-X github.com/meshx/meshx/internal/version.Version=$(MESHX_VERSION)
# Debian changelog entry for this build, dated like the commit (reproducible).
PACKAGE_DATE := $(shell git log -1 --format=%aD 2>/dev/null || date -R)
# The man pages' date: the commit's, so the package is reproducible.
PACKAGE_EPOCH := $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
PACKAGE_COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

# The newest GLIBC_ symbol version the staged binaries use ("" when static).
PACKAGE_LIBC := objdump -T $(PACKAGE_STAGE)/meshx-init $(PACKAGE_STAGE)/meshx-proxy | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | sed 's/^GLIBC_//'
RPM := dist/meshx-$(MESHX_VERSION)-1.x86_64.rpm

.PHONY: package package-lint rpm rpm-lint package-stage nfpm

# What both packages hold, staged in $(PACKAGE_STAGE).
package-stage: $(NFPM)
	rm -rf $(PACKAGE_STAGE)
	mkdir -p $(PACKAGE_STAGE) dist
	GOTOOLCHAIN=local go build -buildmode=pie -trimpath -ldflags "$(PACKAGE_LDFLAGS)" \
		-o $(PACKAGE_STAGE)/ ./cmd/meshx-init ./cmd/meshx-proxy
	strip --strip-unneeded --remove-section=.comment $(PACKAGE_STAGE)/meshx-init $(PACKAGE_STAGE)/meshx-proxy
	SOURCE_DATE_EPOCH=$(PACKAGE_EPOCH) GOTOOLCHAIN=local go run ./internal/cli/gendocs \
		-out $(PACKAGE_STAGE) -version '$(MESHX_VERSION)'
	gzip -9n $(PACKAGE_STAGE)/man/*.8
	printf 'meshx (%s) unstable; urgency=medium\n\n  * Build of commit %s.\n\n -- meshx maintainers <meshx@example.org>  %s\n' \
		'$(MESHX_VERSION)' '$(PACKAGE_COMMIT)' '$(PACKAGE_DATE)' | gzip -9n >$(PACKAGE_STAGE)/changelog.gz

# $(call nfpm-package,<packager>,<file>,<libc dependency, $$libc the version>)
define nfpm-package
	libc=$$($(PACKAGE_LIBC)); \
	MESHX_VERSION='$(MESHX_VERSION)' MESHX_LIBC_DEPENDS="$${libc:+$(3)}" \
		$(NFPM) package --config packaging/nfpm.yaml --packager $(1) --target $(2)
	@echo $(2)
endef

package: package-stage
	$(call nfpm-package,deb,$(DEB),libc6 (>= $$libc))

package-lint: package
	lintian --fail-on error,warning --display-info $(DEB)

rpm: package-stage
	$(call nfpm-package,rpm,$(RPM),glibc >= $$libc)

rpm-lint: rpm
	PATH=$(CURDIR)/packaging/rpmlint-bin:$$PATH rpmlint --strict --config packaging/rpmlint.toml $(RPM)

nfpm: $(NFPM)

# Version-keyed cache path: built once per pinned version, by the script that
# builds every pinned tool (the path it prints is $(NFPM)).
$(NFPM):
	MESHX_CACHE=$(MESHX_CACHE) ./scripts/build-tool.sh nfpm github.com/goreleaser/nfpm/v2 github.com/goreleaser/nfpm/v2/cmd/nfpm >/dev/null

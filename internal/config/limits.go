package config

import (
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
)

// Limits on what a config may hold (docs/configuration.md, "Limits"). Each
// is far above any real use and keeps a hostile file from costing memory,
// time, or a registration the agent refuses later.
const (
	MaxFileSize  = 256 << 10 // bytes of one service-config or meshx.yaml
	MaxDepth     = 32        // nesting of mappings and lists
	MaxTags      = 64        // tags of one service
	MaxTagLen    = 256       // bytes of one tag
	MaxUpstreams = 256       // upstreams of one service-config

	// Consul's own limits on service meta (structs.ValidateServiceMetadata):
	// 64 pairs, of which meshx writes metaReserved for its ownership records.
	MaxMetaPairs    = 64 - metaReserved
	MaxMetaKeyLen   = 128
	MaxMetaValueLen = 512
	metaReserved    = 4

	MinTTL      = time.Second
	MaxTTL      = 24 * time.Hour
	MinInterval = 100 * time.Millisecond
	MaxWait     = 24 * time.Hour
	// MaxDrain fits a stop's drain, the proxy's graceful stop (10s) and
	// the deregistration into the unit's TimeoutStopSec=30s.
	MaxDrain = 15 * time.Second
)

// Consul's rule for meta keys.
var metaKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// ValidateTags applies meshx's rules for service tags: at most MaxTags, each
// a non-empty string of at most MaxTagLen bytes without control characters.
func ValidateTags(tags []string, field string, at func(field, format string, args ...any)) {
	if len(tags) > MaxTags {
		at(field, "%d tags; at most %d", len(tags), MaxTags)
		return
	}
	for i, t := range tags {
		switch {
		case t == "" || strings.ContainsFunc(t, unicode.IsControl):
			at(fieldIndex(field, i), "invalid tag %q: a tag is a non-empty string without control characters", t)
		case len(t) > MaxTagLen:
			at(fieldIndex(field, i), "tag is %d bytes; at most %d", len(t), MaxTagLen)
		}
	}
}

// ValidateMeta applies Consul's rules for service meta, less the pairs meshx
// keeps for itself, and keeps meshx's prefix.
func ValidateMeta(meta map[string]string, field string, at func(field, format string, args ...any)) {
	if len(meta) > MaxMetaPairs {
		at(field, "%d meta pairs; at most %d (Consul allows %d, meshx writes %d)", len(meta), MaxMetaPairs, MaxMetaPairs+metaReserved, metaReserved)
		return
	}
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		f := field + "." + k
		switch {
		case strings.HasPrefix(k, "meshx-"):
			at(f, "the meta key prefix \"meshx-\" is reserved for meshx's ownership records")
		case strings.HasPrefix(k, "consul-"):
			at(f, "the meta key prefix \"consul-\" is reserved by Consul")
		case !metaKeyRE.MatchString(k) || len(k) > MaxMetaKeyLen:
			at(f, "invalid meta key %q: use letters, digits, '_' and '-', at most %d", k, MaxMetaKeyLen)
		}
		if len(meta[k]) > MaxMetaValueLen {
			at(f, "meta value is %d bytes; Consul allows at most %d", len(meta[k]), MaxMetaValueLen)
		}
	}
}

package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Authorizer decides whether a source service may connect to ours. It keeps
// the intentions for our service current with a blocking query against the
// servers (not the agent's cache, which can serve a stale decision for a
// long time) and evaluates them itself, as Envoy's RBAC filter does. Only
// when no intention matches does it ask the agent for the default decision
// (the default intention policy, or the ACL default), cached briefly.
type Authorizer struct {
	src     Source
	service string
	log     *slog.Logger

	intentions atomic.Pointer[[]*api.Intention] // nil until the first answer
	ready      chan struct{}
	readyOnce  sync.Once
	changed    chan struct{} // closed and replaced at each change

	mu       sync.Mutex
	defaults map[string]defaultDecision // by source URI
	chMu     sync.Mutex
}

type defaultDecision struct {
	allow bool
	at    time.Time
}

// defaultTTL bounds how long a default decision is reused.
var defaultTTL = 5 * time.Second

// NewAuthorizer makes the authorizer of connections to service.
func NewAuthorizer(src Source, service string, log *slog.Logger) *Authorizer {
	return &Authorizer{src: src, service: service, log: log, ready: make(chan struct{}),
		changed: make(chan struct{}), defaults: map[string]defaultDecision{}}
}

// Run keeps the intentions current until ctx ends.
func (a *Authorizer) Run(ctx context.Context) {
	watch(ctx, a.log, "intentions", func(ctx context.Context, index uint64) (uint64, error) {
		ixns, next, err := a.src.Intentions(ctx, a.service, index)
		if err != nil || next == index {
			return next, err
		}
		// The servers sort by precedence; keep that order whatever the source.
		ixns = slices.Clone(ixns)
		slices.SortStableFunc(ixns, func(x, y *api.Intention) int { return y.Precedence - x.Precedence })
		a.intentions.Store(&ixns)
		a.mu.Lock()
		clear(a.defaults)
		a.mu.Unlock()
		a.readyOnce.Do(func() { close(a.ready) })
		a.chMu.Lock()
		close(a.changed)
		a.changed = make(chan struct{})
		a.chMu.Unlock()
		a.log.Debug("intentions", "count", len(ixns), "index", next)
		return next, nil
	})
}

// Ready is closed once the intentions are known.
func (a *Authorizer) Ready() <-chan struct{} { return a.ready }

// Changed is closed at the next change of the intentions.
func (a *Authorizer) Changed() <-chan struct{} {
	a.chMu.Lock()
	defer a.chMu.Unlock()
	return a.changed
}

// Allow decides for a verified source id; reason says which rule decided.
func (a *Authorizer) Allow(ctx context.Context, src ServiceID) (bool, string, error) {
	p := a.intentions.Load()
	if p == nil {
		return false, "", errNoIntentions
	}
	if ixn := match(*p, src); ixn != nil {
		if len(ixn.Permissions) > 0 {
			// An L4 proxy cannot enforce L7 permissions: deny, as the agent does.
			return false, "L7 intention " + describe(ixn), nil
		}
		return ixn.Action == api.IntentionActionAllow, "intention " + describe(ixn), nil
	}
	return a.defaultFor(ctx, src)
}

var errNoIntentions = fmt.Errorf("intentions not known yet")

func (a *Authorizer) defaultFor(ctx context.Context, src ServiceID) (bool, string, error) {
	uri := src.URI()
	a.mu.Lock()
	d, ok := a.defaults[uri]
	a.mu.Unlock()
	if ok && time.Since(d.at) < defaultTTL {
		return d.allow, "default policy", nil
	}
	allow, reason, err := a.src.Authorize(ctx, a.service, uri)
	if err != nil {
		return false, "", err
	}
	if strings.HasPrefix(reason, "Matched") {
		// The agent decided from an intention the servers no longer have
		// (its cache is behind, hashicorp/consul#23368): its answer is not
		// the default. Deny, and ask again next time.
		return false, "the agent's intention cache is stale (" + reason + "); denied until it catches up", nil
	}
	a.mu.Lock()
	a.defaults[uri] = defaultDecision{allow: allow, at: time.Now()}
	a.mu.Unlock()
	return allow, "default: " + reason, nil
}

// match returns the highest-precedence intention whose source is src: the
// list comes sorted by precedence, as the servers return it.
func match(ixns []*api.Intention, src ServiceID) *api.Intention {
	for _, ixn := range ixns {
		if ixn.SourcePeer != "" || ixn.SourceSamenessGroup != "" {
			continue // a peer's or a sameness group's identity is never a local service
		}
		if !nameMatch(ixn.SourceNS, src.Namespace) || !nameMatch(ixn.SourcePartition, src.Partition) {
			continue
		}
		if ixn.SourceName == "*" || ixn.SourceName == src.Service {
			return ixn
		}
	}
	return nil
}

func nameMatch(pattern, name string) bool {
	if pattern == "" || pattern == "*" {
		return true
	}
	if name == "" {
		name = "default"
	}
	return pattern == name
}

func describe(ixn *api.Intention) string {
	action := string(ixn.Action)
	if action == "" {
		action = "L7"
	}
	return fmt.Sprintf("%s => %s (%s, precedence %d)", ixn.SourceName, ixn.DestinationName, action, ixn.Precedence)
}

// Package ttl heartbeats a Consul TTL check from real health: each beat asks a
// probe for the current health, writes it to the agent, and re-registers the
// service when the agent has lost the check (a restarted dev agent forgets
// everything).
package ttl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/register"
)

// Health is what one probe found.
type Health struct {
	Status string // api.HealthPassing, api.HealthWarning or api.HealthCritical
	Output string // why, shown in Consul
}

// Agent is the part of *api.Agent the heartbeat uses.
type Agent interface {
	UpdateTTLOpts(checkID, output, status string, q *api.QueryOptions) error
}

// Options configure a Heartbeat. Required: Agent, CheckID, Interval, Probe.
type Options struct {
	Agent    Agent
	CheckID  string
	Interval time.Duration
	// Probe returns the current health; called once per beat.
	Probe func(ctx context.Context) Health
	// Reregister restores the service, sidecar and check after the agent lost
	// them; status is the health to register the check with. nil: lost is an error.
	Reregister func(ctx context.Context, status string) error
	// Hold, if set, is asked before a health is written; true keeps it back
	// (meshx-proxy holds critical healths while it starts: the check was
	// registered critical, and each write costs the agent a catalog sync).
	Hold func(h Health) bool
	// OnBeat, if set, is called after each beat with the health written and the
	// error of writing it (nil when the agent took it).
	OnBeat func(h Health, err error)
	Logger *slog.Logger // nil: discard
}

// ErrMissingOption reports a required option left empty.
var ErrMissingOption = errors.New("ttl: missing required option")

// Heartbeat keeps one TTL check up to date.
type Heartbeat struct {
	o       Options
	last    Health    // last probed
	written Health    // last accepted by the agent
	at      time.Time // when written was accepted
}

// New checks the options.
func New(o Options) (*Heartbeat, error) {
	if o.Agent == nil || o.CheckID == "" || o.Interval <= 0 || o.Probe == nil {
		return nil, ErrMissingOption
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Heartbeat{o: o}, nil
}

// Beat probes once and writes the result, re-registering if the check is lost.
func (h *Heartbeat) Beat(ctx context.Context) (Health, error) {
	hl := h.o.Probe(ctx)
	// Only changes are written at once; an unchanged health is written again
	// once per Interval, which keeps the TTL alive without loading the agent
	// when Beat is called more often (meshx-proxy does until it is ready).
	held := h.o.Hold != nil && h.o.Hold(hl)
	if held || hl == h.written && time.Since(h.at) < h.o.Interval*9/10 {
		h.observe(hl)
		if h.o.OnBeat != nil {
			h.o.OnBeat(hl, nil)
		}
		return hl, nil
	}
	err := h.write(ctx, hl)
	if err != nil && lost(err) && h.o.Reregister != nil {
		h.o.Logger.Warn("the agent lost the check; registering again", "check", h.o.CheckID, "err", err)
		if rerr := h.o.Reregister(ctx, hl.Status); rerr != nil {
			err = fmt.Errorf("re-register after lost check: %w", rerr)
		} else {
			err = h.write(ctx, hl)
		}
	}
	if err == nil {
		h.written, h.at = hl, time.Now()
	} else if ctx.Err() == nil {
		h.o.Logger.Warn("heartbeat failed", "check", h.o.CheckID, "err", err)
	}
	h.observe(hl)
	if h.o.OnBeat != nil {
		h.o.OnBeat(hl, err)
	}
	return hl, err
}

func (h *Heartbeat) observe(hl Health) {
	if hl != h.last {
		h.o.Logger.Info("health changed", "check", h.o.CheckID, "status", hl.Status, "output", hl.Output)
		h.last = hl
	}
}

func (h *Heartbeat) write(ctx context.Context, hl Health) error {
	return h.o.Agent.UpdateTTLOpts(h.o.CheckID, hl.Output, hl.Status, (&api.QueryOptions{}).WithContext(ctx))
}

// Set writes a status once (used at shutdown to set the check critical).
func Set(ctx context.Context, a Agent, checkID string, hl Health) error {
	return a.UpdateTTLOpts(checkID, hl.Output, hl.Status, (&api.QueryOptions{}).WithContext(ctx))
}

// lost reports an agent answer meaning the check is not registered: a 404
// (register.IsNotFound decides that), or an older agent's error naming an
// unknown check.
func lost(err error) bool {
	if register.IsNotFound(err) {
		return true
	}
	var se api.StatusError
	if !errors.As(err, &se) {
		return false
	}
	b := strings.ToLower(se.Body)
	if strings.Contains(b, "acl not found") { // the token is refused, not the check lost
		return false
	}
	return strings.Contains(b, "unknown check") || strings.Contains(b, "does not have associated ttl") ||
		strings.Contains(b, "not found")
}

package dataplane

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Pacing of blocking queries.
var (
	// watchIdle spaces queries that came back without a change (a wait
	// that timed out, an endpoint that does not block), so none spins.
	watchIdle = 2 * time.Second
	// watchRetryMax caps the backoff after errors.
	watchRetryMax = 10 * time.Second
)

// watch runs one blocking query after another until ctx ends: fetch gets the
// index of the last answer and returns the new one. Errors are logged once
// per failure streak and retried with jittered backoff; the last good data
// stays in use meanwhile (fetch only publishes what it got).
func watch(ctx context.Context, log *slog.Logger, what string, fetch func(ctx context.Context, index uint64) (uint64, error)) {
	watchEvery(ctx, log, what, watchIdle, fetch)
}

// watchEvery is watch with its own pause after an answer without a change
// (idle): for an endpoint that does not block, it is the polling period.
func watchEvery(ctx context.Context, log *slog.Logger, what string, idle time.Duration,
	fetch func(ctx context.Context, index uint64) (uint64, error)) {
	var index uint64
	const base = 200 * time.Millisecond
	backoff, failing := base, false
	for ctx.Err() == nil {
		next, err := fetch(ctx, index)
		if ctx.Err() != nil {
			return
		}
		var pause time.Duration
		switch {
		case err != nil:
			if !failing {
				log.Warn("watch failed; retrying", "watch", what, "err", err)
			}
			failing = true
			pause = backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, watchRetryMax)
		case next == 0 || next == index:
			pause = idle // no change, or an endpoint that does not block
		case next < index:
			// The index went backwards (agent restarted, snapshot
			// restored): start over from the beginning.
			index, pause = 0, base
		default:
			index = next
		}
		if err == nil && failing {
			log.Info("watch recovered", "watch", what)
			failing, backoff = false, base
		}
		if pause > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
		}
	}
}

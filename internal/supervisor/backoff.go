package supervisor

import "time"

// jitter is the largest fraction taken off a restart delay, so that proxies
// that crashed together do not restart in lockstep.
const jitter = 0.2

// backoffDelay returns the delay before restart number attempt (1 for the
// first restart): initial doubled attempt-1 times, capped at max, minus
// jitter*rnd of itself, where rnd is in [0, 1). Taking the jitter off (never
// adding it) keeps the result within max and, below the cap, strictly
// increasing from one attempt to the next.
func backoffDelay(initial, max time.Duration, attempt int, rnd float64) time.Duration {
	d := initial
	for i := 1; i < attempt && d < max; i++ {
		if d > max/2 {
			d = max
			break
		}
		d *= 2
	}
	d = min(d, max)
	return d - time.Duration(float64(d)*jitter*rnd)
}

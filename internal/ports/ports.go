// Package ports hands out local TCP ports for service and upstream endpoints
// from one range per host, and remembers them in the state directory so every
// endpoint keeps its port across re-runs and reboots.
//
// Service endpoints are allocated upward from the low end of the range,
// upstream endpoints downward from the high end. A new allocation skips ports
// that are already taken (a test listen fails) and ports held by other keys;
// an existing allocation is kept even when its port is now in use, since the
// app it belongs to may be the one listening. Ports fixed by the config are
// recorded as reservations that no allocation hands out.
//
// All changes happen under an exclusive flock on ports.lock for the whole
// load-allocate-save, so concurrent meshx-init processes never hand out the
// same port, and ports.json is replaced atomically and only when it changes.
package ports

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"
)

// DefaultLockTimeout is how long Allocate and Release wait for another process
// holding the state lock when Options.LockTimeout is zero.
const DefaultLockTimeout = 10 * time.Second

var (
	// ErrNoStateDir is returned when Options.StateDir is empty.
	ErrNoStateDir = errors.New("ports: no state directory given")
	// ErrExhausted is returned when the range has no port left for a key.
	ErrExhausted = errors.New("port range exhausted")
	// ErrPortConflict is returned when two keys are given the same fixed port.
	ErrPortConflict = errors.New("port conflict")
	// ErrCorruptState is returned when ports.json cannot be understood.
	ErrCorruptState = errors.New("corrupt port state")
	// ErrLockTimeout is returned when the state lock stays held past LockTimeout.
	ErrLockTimeout = errors.New("state lock held by another process")
)

// Options says where allocations live and where new ports come from.
type Options struct {
	// StateDir holds ports.json and ports.lock. Required (ErrNoStateDir);
	// Allocate and Release create it with mode 0755 if it is missing.
	StateDir string
	// Range is where new ports come from: the zero IP means 127.0.0.1 and
	// zero Low and High mean DefaultLow..DefaultHigh. Allocate refuses a
	// range that fails Range.Validate.
	Range Range
	// InUse reports whether ip:port is taken, so a new allocation skips it.
	// nil means: a TCP listen on ip:port fails.
	InUse func(ip netip.Addr, port int) bool
	// LockTimeout bounds the wait for the state lock; zero means DefaultLockTimeout.
	LockTimeout time.Duration
}

// withDefaults fills in the zero fields of o; it is the only place defaults are set.
func (o Options) withDefaults() (Options, error) {
	if o.StateDir == "" {
		return o, ErrNoStateDir
	}
	o.Range = o.Range.WithDefaults()
	if o.InUse == nil {
		o.InUse = listenFails
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	return o, nil
}

// listenFails is the default InUse: the port is taken if a TCP listen on it fails.
func listenFails(ip netip.Addr, port int) bool { return Listenable(ip, port) != nil }

// Listenable tries a TCP listen on ip:port and closes it at once: the error
// says why a process could not listen there now ("address already in use"
// when another process holds the port). The unspecified address checks the
// port on every address.
func Listenable(ip netip.Addr, port int) error {
	l, err := net.Listen("tcp", netip.AddrPortFrom(ip, uint16(port)).String())
	if err != nil {
		return err
	}
	return l.Close()
}

// Request asks for the port of one endpoint.
type Request struct {
	// Key names the endpoint, e.g. "service/web-host1" or
	// "upstream/client-host1/web". Required.
	Key string
	// Fixed, when above zero, is the port the config fixed for this key: it is
	// recorded as a reservation and never allocated to another key. Zero means
	// allocate one.
	Fixed int
	// Down allocates downward from Range.High (upstreams); false allocates
	// upward from Range.Low (services).
	Down bool
}

// Allocate returns the port of every requested key, allocating the missing
// ones, and persists the result. It is all-or-nothing: on error nothing is
// persisted. Keys not in reqs keep their allocations untouched.
//
// For a key without a fixed port, its existing port (allocated or formerly
// fixed) is kept as long as it lies inside the range, even if it is in use
// now; otherwise, and for new keys in the order of reqs, the first port from
// the key's end of the range that no key holds and InUse does not report is
// taken. An exhausted range is an error (ErrExhausted) naming the range.
//
// A fixed port wins over another key's allocation of the same port: that key
// loses it and, if it is in reqs, gets a fresh port in this call (otherwise it
// gets one the next time it is allocated). The same fixed port for two keys,
// in this call or against a reservation recorded earlier by a key not in this
// call, is an error (ErrPortConflict) naming both keys.
func Allocate(o Options, reqs []Request) (map[string]int, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := o.Range.Validate(); err != nil {
		return nil, err
	}
	reqs, err = checkRequests(reqs)
	if err != nil {
		return nil, err
	}
	var got map[string]int
	err = update(o, func(state map[string]entry) (map[string]entry, error) {
		var next map[string]entry
		next, got, err = plan(o, state, reqs)
		return next, err
	})
	if err != nil {
		return nil, err
	}
	return got, nil
}

// Release forgets keys (their services are gone), freeing their ports and
// fixed-port reservations. Unknown keys are ignored.
func Release(o Options, keys []string) error {
	o, err := o.withDefaults()
	if err != nil {
		return err
	}
	return update(o, func(state map[string]entry) (map[string]entry, error) {
		next := maps.Clone(state)
		for _, k := range keys {
			delete(next, k)
		}
		return next, nil
	})
}

// Load returns every recorded key and its port (allocated or fixed) without
// taking the lock or changing anything; a missing state file is an empty map.
func Load(o Options) (map[string]int, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	state, _, err := readState(statePath(o.StateDir))
	if err != nil {
		return nil, err
	}
	out := make(map[string]int, len(state))
	for k, e := range state {
		out[k] = e.Port
	}
	return out, nil
}

// checkRequests rejects empty keys, bad fixed ports, a key asked twice with
// different settings and a fixed port asked for by two keys; it drops exact
// repeats.
func checkRequests(reqs []Request) ([]Request, error) {
	seen := make(map[string]Request, len(reqs))
	fixedBy := map[int]string{}
	var out []Request
	var errs []error
	for _, q := range reqs {
		switch prev, dup := seen[q.Key]; {
		case q.Key == "":
			errs = append(errs, errors.New("port request with an empty key"))
		case q.Fixed < 0 || q.Fixed > 65535:
			errs = append(errs, fmt.Errorf("%s: fixed port %d is outside 1..65535", q.Key, q.Fixed))
		case dup && prev != q:
			errs = append(errs, fmt.Errorf("%s: requested twice with different settings", q.Key))
		case dup:
		case q.Fixed > 0 && fixedBy[q.Fixed] != "":
			errs = append(errs, fmt.Errorf("%w: port %d is fixed for both %s and %s", ErrPortConflict, q.Fixed, fixedBy[q.Fixed], q.Key))
		default:
			seen[q.Key] = q
			if q.Fixed > 0 {
				fixedBy[q.Fixed] = q.Key
			}
			out = append(out, q)
		}
	}
	return out, errors.Join(errs...)
}

// plan computes the next state and the ports of reqs from the current state,
// which it does not modify.
func plan(o Options, state map[string]entry, reqs []Request) (map[string]entry, map[string]int, error) {
	next := maps.Clone(state)
	if next == nil {
		next = map[string]entry{}
	}
	requested := make(map[string]bool, len(reqs))
	fixedOwner := map[int]string{}
	for _, q := range reqs {
		requested[q.Key] = true
		if q.Fixed > 0 {
			next[q.Key] = entry{Port: q.Fixed, Fixed: true}
			fixedOwner[q.Fixed] = q.Key
		}
	}
	// Other keys holding a port that is now fixed lose it; a reservation of a
	// key this call does not speak for cannot be overridden.
	for _, k := range slices.Sorted(maps.Keys(next)) {
		e := next[k]
		owner, ok := fixedOwner[e.Port]
		if !ok || owner == k {
			continue
		}
		if e.Fixed && !requested[k] {
			return nil, nil, fmt.Errorf("%w: port %d is fixed for both %s (recorded earlier; release it if that service is gone) and %s",
				ErrPortConflict, e.Port, k, owner)
		}
		delete(next, k)
	}
	// Existing ports of non-fixed keys stay if they are inside the range.
	for _, q := range reqs {
		if e, ok := next[q.Key]; ok && q.Fixed == 0 {
			if o.Range.contains(e.Port) {
				next[q.Key] = entry{Port: e.Port}
			} else {
				delete(next, q.Key)
			}
		}
	}
	if err := allocateMissing(o, next, reqs); err != nil {
		return nil, nil, err
	}
	got := make(map[string]int, len(reqs))
	for _, q := range reqs {
		got[q.Key] = next[q.Key].Port
	}
	return next, got, nil
}

// allocateMissing gives every request without an entry in next a new port.
func allocateMissing(o Options, next map[string]entry, reqs []Request) error {
	held := make(map[int]bool, len(next))
	for _, e := range next {
		held[e.Port] = true
	}
	busy := map[int]bool{} // ports InUse reported, asked once per call
	for _, q := range reqs {
		if _, ok := next[q.Key]; ok {
			continue
		}
		port, ok := scan(o, held, busy, q.Down)
		if !ok {
			return fmt.Errorf("%w: no free port in %s for %s (%d held by meshx, %d in use or not bindable)",
				ErrExhausted, o.Range, q.Key, countIn(o.Range, held), countIn(o.Range, busy))
		}
		next[q.Key] = entry{Port: port}
		held[port] = true
	}
	return nil
}

// scan walks the range from the low end (or from the high end when down) and
// returns the first port neither held nor busy; each port is visited once.
func scan(o Options, held, busy map[int]bool, down bool) (int, bool) {
	port, step := o.Range.Low, 1
	if down {
		port, step = o.Range.High, -1
	}
	for range o.Range.High - o.Range.Low + 1 {
		if !held[port] && !busy[port] {
			if !o.InUse(o.Range.IP, port) {
				return port, true
			}
			busy[port] = true
		}
		port += step
	}
	return 0, false
}

func countIn(r Range, ports map[int]bool) int {
	n := 0
	for p := range ports {
		if r.contains(p) {
			n++
		}
	}
	return n
}

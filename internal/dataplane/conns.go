package dataplane

import (
	"context"
	"net"
	"sync"
)

// tracked is one proxied connection: both ends, and for inbound ones the
// verified source (re-checked when intentions change).
type tracked struct {
	a, b   net.Conn
	source *ServiceID
}

func (t *tracked) close() {
	t.a.Close()
	t.b.Close()
}

// connSet holds the open connections, for drain, re-authorization and close.
type connSet struct {
	mu     sync.Mutex
	set    map[*tracked]struct{}
	empty  chan struct{} // closed while the set is empty
	closed bool          // closeAll ran: nothing more is added
}

func newConnSet() *connSet {
	e := make(chan struct{})
	close(e)
	return &connSet{set: map[*tracked]struct{}{}, empty: e}
}

// add tracks t; false when the set was closed (the caller closes t).
func (s *connSet) add(t *tracked) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if len(s.set) == 0 {
		s.empty = make(chan struct{})
	}
	s.set[t] = struct{}{}
	return true
}

func (s *connSet) remove(t *tracked) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.set[t]; !ok {
		return
	}
	delete(s.set, t)
	if len(s.set) == 0 {
		close(s.empty)
	}
}

func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.set)
}

func (s *connSet) snapshot() []*tracked {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*tracked, 0, len(s.set))
	for t := range s.set {
		out = append(out, t)
	}
	return out
}

// wait returns when the set is empty or ctx ends.
func (s *connSet) wait(ctx context.Context) {
	s.mu.Lock()
	e := s.empty
	s.mu.Unlock()
	select {
	case <-e:
	case <-ctx.Done():
	}
}

// closeAll closes every tracked connection, and from now on refuses new ones.
func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	for _, t := range s.snapshot() {
		t.close()
	}
}

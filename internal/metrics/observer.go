package metrics

import (
	"sync"
	"time"
)

// Observer feeds the data plane's events (the dataplane.Observer
// interface) into DataPlane's families. A direction is "inbound",
// "passthrough" (transparent traffic leaving the mesh) or an upstream's
// name; the upstream label carries it for the outbound ones.
type Observer struct {
	d  *DataPlane
	mu sync.Mutex
	ls map[string]*Listener
}

// Observer returns an Observer of d (nil d: one that records nothing).
func (d *DataPlane) Observer() *Observer {
	return &Observer{d: d, ls: map[string]*Listener{}}
}

func (o *Observer) listener(direction string) *Listener {
	o.mu.Lock()
	defer o.mu.Unlock()
	l, ok := o.ls[direction]
	if !ok {
		if direction == Inbound {
			l = o.d.Listener(Inbound, "")
		} else {
			l = o.d.Listener(Outbound, direction)
		}
		o.ls[direction] = l
	}
	return l
}

func (o *Observer) ConnOpened(direction string) { o.listener(direction).Opened() }

func (o *Observer) Transferred(direction string, received, sent int64) {
	o.listener(direction).Transferred(received, sent)
}

func (o *Observer) ConnClosed(direction string) { o.listener(direction).Closed() }

func (o *Observer) Refused(direction string)    { o.listener(direction).Refused() }
func (o *Observer) TLSFailed(direction string)  { o.listener(direction).TLSFailure() }
func (o *Observer) DialFailed(upstream string)  { o.listener(upstream).DialFailed() }
func (o *Observer) DialRetried(upstream string) { o.listener(upstream).DialRetried() }
func (o *Observer) LeafExpiry(t time.Time)      { o.d.LeafExpiry(t) }

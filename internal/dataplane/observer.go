package dataplane

import "time"

// Directions a connection takes through the plane, besides an upstream's
// destination name.
const (
	Inbound     = "inbound"     // to the public listener, towards the app
	Passthrough = "passthrough" // transparent outbound to a destination outside the mesh
)

// Observer is told what the data plane does, for metrics. Every method must
// be cheap and safe for concurrent use. A direction is Inbound, Passthrough
// or an upstream's destination name.
type Observer interface {
	ConnOpened(direction string)
	// Transferred counts bytes as they move: read from the connecting side
	// (received) and written back to it (sent).
	Transferred(direction string, received, sent int64)
	ConnClosed(direction string)
	// Refused: intentions denied an inbound connection, or mesh
	// destinations only refused a passthrough one.
	Refused(direction string)
	TLSFailed(direction string)
	DialFailed(upstream string)
	DialRetried(upstream string)
	LeafExpiry(t time.Time)
}

type nopObserver struct{}

func (nopObserver) ConnOpened(string)                {}
func (nopObserver) Transferred(string, int64, int64) {}
func (nopObserver) ConnClosed(string)                {}
func (nopObserver) Refused(string)                   {}
func (nopObserver) TLSFailed(string)                 {}
func (nopObserver) DialFailed(string)                {}
func (nopObserver) DialRetried(string)               {}
func (nopObserver) LeafExpiry(time.Time)             {}

package dataplane

import "time"

// Observer is told what the data plane does, for metrics. Every method must
// be cheap and safe for concurrent use. Direction names are "inbound" or an
// upstream's destination name.
type Observer interface {
	ConnOpened(direction string)
	ConnClosed(direction string, received, sent int64)
	Refused(reason string) // "intentions"
	TLSFailed()
	DialFailed(upstream string)
	DialRetried(upstream string)
	LeafExpiry(t time.Time)
}

type nopObserver struct{}

func (nopObserver) ConnOpened(string)               {}
func (nopObserver) ConnClosed(string, int64, int64) {}
func (nopObserver) Refused(string)                  {}
func (nopObserver) TLSFailed()                      {}
func (nopObserver) DialFailed(string)               {}
func (nopObserver) DialRetried(string)              {}
func (nopObserver) LeafExpiry(time.Time)            {}

package systemd

import (
	"context"
)

// StopUnit stops one service's meshx-proxy@ instance (it stays enabled, so it
// comes back at the next boot or `meshx-init run`) and waits for the job, as
// Reconcile's stops do; a service in a network namespace of its own
// has that removed too (its meshx-netns@ unit stopped: CNI DEL).
func StopUnit(ctx context.Context, service string) error {
	conn, err := Dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	o := Options{Bus: conn}
	o.defaults()
	return (&reconciler{Options: o}).stopInstance(ctx, UnitName(service))
}

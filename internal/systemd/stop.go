package systemd

import (
	"context"
	"fmt"
)

// StopUnit stops one service's meshx-proxy@ instance (it stays enabled, so it
// comes back at the next boot or `meshx-init run`) and waits for the job.
func StopUnit(ctx context.Context, service string) error {
	conn, err := Dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	name := UnitName(service)
	ch := make(chan string, 1)
	if _, err := conn.StopUnitContext(ctx, name, "replace", ch); err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	select {
	case res := <-ch:
		if res != "done" {
			return fmt.Errorf("stop %s: job %s", name, res)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", name, ctx.Err())
	}
}

package systemd

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notify sends one sd_notify state string ("READY=1", "STATUS=...") to the service
// manager. It is a no-op, returning nil, when NOTIFY_SOCKET is not set (not
// started by systemd, or by a unit that is not Type=notify / NotifyAccess=).
func Notify(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return fmt.Errorf("sd_notify %q: %w", firstLine(state), err)
	}
	return nil
}

// WatchdogInterval is how often the watchdog must be pinged: half of the
// WatchdogSec= systemd asked for, or 0 when no watchdog is enabled for this
// process.
func WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}

// RunWatchdog pings systemd's watchdog every WatchdogInterval for as long as
// healthy returns nil, and stops pinging (without returning) while it does not,
// so that a wedged supervisor gets killed and restarted by systemd. It returns
// when ctx is done, at once when no watchdog is enabled.
func RunWatchdog(ctx context.Context, healthy func() error, log *slog.Logger) {
	every := WatchdogInterval()
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	wasHealthy := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := healthy()
		switch {
		case err == nil:
			if nerr := Notify(daemon.SdNotifyWatchdog); nerr != nil && log != nil {
				log.Warn("watchdog ping", "err", nerr)
			}
			if !wasHealthy && log != nil {
				log.Info("healthy again: watchdog pings resumed")
			}
		case wasHealthy && log != nil:
			log.Warn("unhealthy: watchdog pings withheld", "err", err)
		}
		wasHealthy = err == nil
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

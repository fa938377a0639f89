package collective

import "log/slog"

// Logger returns the communicator's logger (Config.Logger, or slog.Default;
// at debug level under RINGO_DEBUG with Init), with this rank attached, for
// the layers built on the communicator to log alongside it.
func (c *Comm) Logger() *slog.Logger { return c.log }

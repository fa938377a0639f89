package collective

// SetSplitConnecting sets the hook split calls before it connects a new
// communicator (nil: none).
func SetSplitConnecting(h func(parent *Comm)) { splitConnecting = h }

package transport

// Dead is closed once the link's reader has stopped: the peer said goodbye
// or was lost, or the link was shut down. Whoever waits on the peer by
// other means (another link to it) can watch it.
func (l *Link) Dead() <-chan struct{} { return l.dead }

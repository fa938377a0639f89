package transport

import (
	"context"
	"net"
)

// Pipe returns the two ends of an in-process stream (the mem transport). It has
// no internal buffering: a write completes as the reader copies it out, so a
// payload is copied once, straight from the sender's buffer into the receiver's.
func Pipe() (Stream, Stream) {
	a, b := net.Pipe()
	return a, b
}

// DialTCP connects to addr over TCP.
func DialTCP(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// ListenTCP listens for peers on addr ("host:port"; port 0 picks one).
func ListenTCP(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, "tcp", addr)
}

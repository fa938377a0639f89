package transport

import (
	"context"
	"fmt"
	"net"
)

// Pipe returns the two ends of an in-process stream (the mem transport). It has
// no internal buffering: a write completes as the reader copies it out, so a
// payload is copied once, straight from the sender's buffer into the receiver's.
// Each end is a NoticeStream: with no buffer, a frame the peer has not asked
// for blocks the writer, and an abort's reason goes beside it.
func Pipe() (Stream, Stream) {
	a, b := net.Pipe()
	toA, toB := newNoticeBox(), newNoticeBox()
	return &pipeStream{Conn: a, in: toA, out: toB}, &pipeStream{Conn: b, in: toB, out: toA}
}

// pipeStream is one end of a Pipe.
type pipeStream struct {
	net.Conn
	in, out noticeBox // the peer's notice to this end; this end's to the peer
}

var _ NoticeStream = (*pipeStream)(nil)

func (p *pipeStream) Notify(b []byte) error  { p.out.put(b); return nil }
func (p *pipeStream) Notices() <-chan []byte { return p.in }

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

// InterfaceAddr returns the address of the network interface named iface that
// peers should dial: its first IPv4 address, else its first address that is
// not link-local.
func InterfaceAddr(iface string) (string, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return "", fmt.Errorf("interface %q: %w", iface, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return "", fmt.Errorf("interface %q: %w", iface, err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			return ipn.IP.String(), nil
		}
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLinkLocalUnicast() {
			return ipn.IP.String(), nil
		}
	}
	return "", fmt.Errorf("interface %q has no usable address", iface)
}

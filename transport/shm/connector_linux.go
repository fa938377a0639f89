package shm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ringo-ml/ringo/transport"
)

// Supported reports whether this machine can run the transport: Linux with
// a writable /dev/shm. The error says what is missing.
func Supported() error {
	if err := unix.Access(segmentDir, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("shm: %s is not a writable directory: %w", segmentDir, err)
	}
	return nil
}

// Over returns the Connector of rank self to the ranks of its host through
// shared memory. Each stream is set up over the stream control makes for
// the same (channel, peer): control must authenticate its streams (a
// transport.Mesh) and should be a kernel socket, whose end of file tells
// when the peer exits (a Mesh over ControlNetwork). The Connector owns
// control: Close closes it.
func Over(self int, control transport.Connector, opt Options) transport.Connector {
	return &connector{self: self, control: control, opt: opt.normalized()}
}

type connector struct {
	self    int
	control transport.Connector
	opt     Options
	closed  sync.Once
}

// Connect sets up a shared-memory stream to peer on channel; both ranks
// must ask for it. A peer that gives up on the setup half-way (its call
// was abandoned: its control stream closes) is waited for again, until
// ctx ends, as a Mesh waits again for a peer whose handshake broke off.
func (c *connector) Connect(ctx context.Context, channel uint64, peer int) (transport.Stream, error) {
	for {
		cs, err := c.control.Connect(ctx, channel, peer)
		if err != nil {
			return nil, err
		}
		s, err := setup(ctx, cs, c.self < peer, c.opt)
		if err == nil {
			return s, nil
		}
		_ = cs.Close()
		if ctx.Err() != nil || !brokenOff(err) {
			return nil, fmt.Errorf("shared memory link to rank %d: %w", peer, err)
		}
	}
}

// brokenOff reports whether a setup failed because the control stream
// ended under it: the peer closed it (or exited), not a refusal.
func brokenOff(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, transport.ErrClosed) ||
		errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
}

// Cost is the shared-memory fit (see shmCost).
func (c *connector) Cost() transport.Cost { return shmCost }

// Close closes the control Connector; streams handed out stay up.
func (c *connector) Close() error {
	var err error
	c.closed.Do(func() { err = c.control.Close() })
	return err
}

// ControlNetwork is the network of the control streams a Connector sets
// its links up over: Unix-domain sockets in the abstract namespace, which
// only processes in the same network namespace can reach (the hosts of
// the network-namespace testbed cannot reach each other's), and which
// leave no file behind. Anyone there may connect; the Mesh's job-token
// handshake refuses whoever cannot prove the token.
func ControlNetwork() transport.Network { return controlNetwork{} }

type controlNetwork struct{}

// Listen listens on a fresh abstract address of 128 random bits, whatever
// addr says (a Mesh asks for "host:0": any free address).
func (controlNetwork) Listen(ctx context.Context, _ string, _ func(string) error) (transport.Listener, error) {
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	addr := "@ringo-" + hex.EncodeToString(rnd[:])
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", addr)
	if err != nil {
		return nil, fmt.Errorf("shm: listening on %s: %w", addr, err)
	}
	return &controlListener{ln: ln, ep: transport.Endpoint{Addr: addr}}, nil
}

// Dial connects to the abstract address to.Addr.
func (controlNetwork) Dial(ctx context.Context, to transport.Endpoint) (transport.Stream, error) {
	if !strings.HasPrefix(to.Addr, "@") {
		return nil, fmt.Errorf("shm: %q is not an abstract socket address: is the peer on another host?", to.Addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", to.Addr)
}

// Cost is the links' (the control streams carry only the setup).
func (controlNetwork) Cost() transport.Cost { return shmCost }
func (controlNetwork) Close() error         { return nil }

type controlListener struct {
	ln net.Listener
	ep transport.Endpoint
}

func (l *controlListener) Endpoint() transport.Endpoint { return l.ep }
func (l *controlListener) Close() error                 { return l.ln.Close() }

func (l *controlListener) Accept(ctx context.Context) (transport.Stream, error) {
	stop := context.AfterFunc(ctx, func() { _ = l.ln.Close() })
	defer stop()
	conn, err := l.ln.Accept()
	if err != nil && ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	return conn, err
}

// HostKey names the memory this process can share: ranks with the same
// key are on one host. It is a digest of the kernel's boot id and of this
// process's IPC and network namespaces, so two containers, or two network
// namespaces of one machine (the testbed's hosts), are different hosts.
func HostKey() (string, error) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("shm: the boot id: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(strings.TrimSpace(string(boot))))
	for _, ns := range []string{"ipc", "net"} {
		id, err := os.Readlink("/proc/self/ns/" + ns)
		if err != nil {
			return "", fmt.Errorf("shm: the %s namespace: %w", ns, err)
		}
		h.Write([]byte{0})
		h.Write([]byte(id))
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

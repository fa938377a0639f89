//go:build !linux

package shm

import (
	"context"
	"errors"

	"github.com/ringo-ml/ringo/transport"
)

var errUnsupported = errors.New("shm: shared memory links need Linux")

// Supported reports whether this machine can run the transport: here it
// cannot.
func Supported() error { return errUnsupported }

// Over returns a Connector whose every Connect fails: see Supported.
func Over(self int, control transport.Connector, opt Options) transport.Connector {
	return unsupported{control}
}

type unsupported struct{ control transport.Connector }

func (unsupported) Connect(context.Context, uint64, int) (transport.Stream, error) {
	return nil, errUnsupported
}
func (unsupported) Cost() transport.Cost { return shmCost }
func (u unsupported) Close() error       { return u.control.Close() }

// ControlNetwork is a network that cannot listen: see Supported.
func ControlNetwork() transport.Network { return unsupportedNetwork{} }

type unsupportedNetwork struct{}

func (unsupportedNetwork) Listen(context.Context, string, func(string) error) (transport.Listener, error) {
	return nil, errUnsupported
}
func (unsupportedNetwork) Dial(context.Context, transport.Endpoint) (transport.Stream, error) {
	return nil, errUnsupported
}
func (unsupportedNetwork) Cost() transport.Cost { return shmCost }
func (unsupportedNetwork) Close() error         { return nil }

// HostKey fails: see Supported.
func HostKey() (string, error) { return "", errUnsupported }

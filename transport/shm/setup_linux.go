package shm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ringo-ml/ringo/transport"
)

// The setup runs over the control stream, which the job-token handshake
// has authenticated: each side offers the name of the segment it created
// for writing, maps the one it is offered, removes its name and says
// whether it could. The lower rank of the pair speaks first, and the two
// take turns, so the exchange also works on a stream without buffering
// (an in-process pipe):
//
//	first                     second
//	offer       ------------>
//	            <------------ offer (after mapping first's segment)
//	verdict     ------------>
//	            <------------ verdict
//
// An offer is the magic "RINGOSEG", a version byte, the name's length and
// the name; a verdict a status byte (0: mapped), a length and a reason.
const (
	offerMagic   = "RINGOSEG"
	offerVersion = 1
	maxNameLen   = 64
	maxReasonLen = 255
)

// setupTimeout bounds a setup, unless ctx ends sooner.
const setupTimeout = 30 * time.Second

// setup makes a Stream over control, whose other end runs setup too (with
// the other value of first). On error it closes nothing: the caller closes
// control.
func setup(ctx context.Context, control transport.Stream, first bool, opt Options) (*Stream, error) {
	deadline := time.Now().Add(setupTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = control.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = control.SetDeadline(time.Now()) })
	defer stop()

	out, name, err := createSegment(segmentDir, opt.SegmentBytes)
	if err != nil {
		return nil, err
	}
	defer func() { _ = unlinkSegment(segmentDir, name) }() // normally the peer has already
	in, err := exchange(control, first, name)
	if !stop() && err == nil {
		// ctx ended: its deadline may be set on control after the one below.
		err = context.Cause(ctx)
	}
	if err != nil {
		out.release()
		if in != nil {
			in.release()
		}
		return nil, err
	}
	_ = control.SetDeadline(time.Time{}) // the watcher waits as long as the stream lives
	return newStream(in, out, control, opt), nil
}

// exchange runs the protocol: it offers name, maps the peer's segment and
// trades verdicts. It returns the peer's segment, mapped, once both sides
// have mapped theirs.
func exchange(control transport.Stream, first bool, name string) (*segment, error) {
	var peer string
	var err error
	if first {
		if err = writeOffer(control, name); err == nil {
			peer, err = readOffer(control)
		}
	} else {
		peer, err = readOffer(control)
	}
	if err != nil {
		return nil, err
	}
	in, mapErr := openSegment(segmentDir, peer)
	if mapErr == nil {
		// Both ends have it mapped (its creator since it made it): the name
		// has served its purpose.
		mapErr = unlinkSegment(segmentDir, peer)
	}
	if !first {
		if err := writeOffer(control, name); err != nil {
			return release(in), err
		}
	}
	var peerErr error
	if first {
		if err = writeVerdict(control, mapErr); err == nil {
			peerErr, err = readVerdict(control)
		}
	} else {
		if peerErr, err = readVerdict(control); err == nil {
			err = writeVerdict(control, mapErr)
		}
	}
	switch {
	case err != nil:
		return release(in), err
	case mapErr != nil:
		return release(in), mapErr
	case peerErr != nil:
		return release(in), peerErr
	}
	return in, nil
}

func release(g *segment) *segment {
	if g != nil {
		g.release()
	}
	return nil
}

func writeOffer(w io.Writer, name string) error {
	msg := make([]byte, 0, len(offerMagic)+2+len(name))
	msg = append(msg, offerMagic...)
	msg = append(msg, offerVersion, byte(len(name)))
	msg = append(msg, name...)
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("shm: sending the segment's name: %w", err)
	}
	return nil
}

// readOffer reads the peer's offer; the name is checked when it is opened.
func readOffer(r io.Reader) (string, error) {
	var head [len(offerMagic) + 2]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return "", fmt.Errorf("shm: reading the peer's segment name: %w", err)
	}
	switch {
	case string(head[:len(offerMagic)]) != offerMagic:
		return "", fmt.Errorf("%w: the peer did not offer a shared memory segment", transport.ErrProtocol)
	case head[len(offerMagic)] != offerVersion:
		return "", fmt.Errorf("%w: the peer offers a segment of setup version %d, this side speaks %d", transport.ErrProtocol, head[len(offerMagic)], offerVersion)
	case head[len(offerMagic)+1] > maxNameLen:
		return "", fmt.Errorf("%w: the peer offers a segment name of %d bytes", transport.ErrProtocol, head[len(offerMagic)+1])
	}
	name := make([]byte, head[len(offerMagic)+1])
	if _, err := io.ReadFull(r, name); err != nil {
		return "", fmt.Errorf("shm: reading the peer's segment name: %w", err)
	}
	return string(name), nil
}

// errPeerCouldNotMap is the peer's verdict that it could not map this
// side's segment; its reason follows.
var errPeerCouldNotMap = errors.New("shm: the peer could not map this side's segment")

func writeVerdict(w io.Writer, mapErr error) error {
	msg := []byte{0, 0}
	if mapErr != nil {
		reason := mapErr.Error()
		if len(reason) > maxReasonLen {
			reason = reason[:maxReasonLen]
		}
		msg = append([]byte{1, byte(len(reason))}, reason...)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("shm: sending the setup's verdict: %w", err)
	}
	return nil
}

// readVerdict returns the peer's verdict (nil: it mapped this side's
// segment) or the error reading it.
func readVerdict(r io.Reader) (verdict, err error) {
	var head [2]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, fmt.Errorf("shm: reading the peer's verdict: %w", err)
	}
	reason := make([]byte, head[1])
	if _, err := io.ReadFull(r, reason); err != nil {
		return nil, fmt.Errorf("shm: reading the peer's verdict: %w", err)
	}
	if head[0] == 0 {
		return nil, nil
	}
	return fmt.Errorf("%w: %s", errPeerCouldNotMap, reason), nil
}

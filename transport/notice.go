package transport

import "bytes"

// A NoticeStream is a Stream that can also carry one short message beside
// its bytes: an abort's reason (the payload of an Abort frame) for a peer
// that is not reading the stream. Frames are read in order, so a notice
// written as a frame waits behind the frames before it, and a peer waiting
// for a receive to be posted for a frame it has begun reads nothing more;
// on a stream with no buffer of its own (an in-process pipe) or with a
// small one (a shared-memory ring), the aborting side cannot even finish
// writing that frame. Beside the stream, the notice reaches that peer at
// once, and stays there for it after the stream has closed.
//
// The mem transport's pipes (Pipe) and transport/shm's streams are
// NoticeStreams; a network stream is not (its frames fit the kernel's
// buffers, and an abort frame after them is read once the peer reads on).
type NoticeStream interface {
	Stream
	// Notify hands the peer's end a copy of p, without waiting for the
	// peer. Only the first notice counts: an abort is final.
	Notify(p []byte) error
	// Notices delivers the peer's notice (at most one), also after the
	// stream has closed.
	Notices() <-chan []byte
}

// remoteAbort decodes an abort's payload (a class byte and the reason)
// from rank peer.
func remoteAbort(peer int, payload []byte) *RemoteAbortError {
	e := &RemoteAbortError{Peer: peer}
	if len(payload) > 0 {
		e.Code, e.Reason = payload[0], string(payload[1:])
	}
	return e
}

// noticeBox is one direction of a pipe's notices: it keeps the first.
type noticeBox chan []byte

func newNoticeBox() noticeBox { return make(noticeBox, 1) }

func (b noticeBox) put(p []byte) {
	if len(p) > maxControlPayload {
		p = p[:maxControlPayload]
	}
	select {
	case b <- bytes.Clone(p):
	default: // one is there already
	}
}

package transport

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"time"
	"unsafe"
)

// ProtocolVersion is the version of the handshake and frame format.
const ProtocolVersion = 2

// Purpose says what a connection is for; both sides must agree.
type Purpose uint8

// Connection purposes.
const (
	PurposeRendezvous Purpose = iota + 1
	PurposePeer
	// PurposeFederated: a federated-learning client and its server
	// (package parallel/fed), which are not ranks of one job.
	PurposeFederated
)

func (p Purpose) String() string {
	switch p {
	case PurposeRendezvous:
		return "rendezvous"
	case PurposePeer:
		return "peer"
	case PurposeFederated:
		return "federated"
	}
	return fmt.Sprintf("purpose(%d)", uint8(p))
}

// Identity is what one side of a handshake says about itself and its job.
type Identity struct {
	Token   []byte  // the job's shared secret; never sent, only proven
	Job     string  // job id; both sides must name the same job
	Rank    int     // this side's rank (-1 when it has none yet)
	Size    int     // world size
	Purpose Purpose // what the connection is for
	// Channel says which of the job's communicators (or other streams) a
	// peer connection belongs to, so that one listener can serve them all.
	Channel uint64
}

// Hello is what the other side said about itself.
type Hello struct {
	Version uint16
	Purpose Purpose
	Rank    int
	Size    int
	Channel uint64
}

const (
	helloSize = 8 + 2 + 1 + 1 + 1 + 4 + 4 + 32 + 32 + 8
	macSize   = sha256.Size
)

var helloMagic = [8]byte{'R', 'I', 'N', 'G', 'O', 'H', 'S', 0}

// handshake status codes (server hello and final verdict).
const (
	statusOK byte = iota
	statusVersion
	statusJob
	statusPurpose
	statusRefused
	statusBadToken
	statusByteOrder
)

type hello struct {
	version uint16
	purpose Purpose
	status  byte
	little  byte
	rank    int32
	size    int32
	job     [32]byte
	nonce   [32]byte
	channel uint64
}

func hostLittleEndian() byte {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x))
}

func (h *hello) encode() []byte {
	b := make([]byte, helloSize)
	copy(b, helloMagic[:])
	binary.LittleEndian.PutUint16(b[8:], h.version)
	b[10] = byte(h.purpose)
	b[11] = h.status
	b[12] = h.little
	binary.LittleEndian.PutUint32(b[13:], uint32(h.rank))
	binary.LittleEndian.PutUint32(b[17:], uint32(h.size))
	copy(b[21:], h.job[:])
	copy(b[53:], h.nonce[:])
	binary.LittleEndian.PutUint64(b[85:], h.channel)
	return b
}

func decodeHello(b []byte) (hello, error) {
	var h hello
	if !bytes.Equal(b[:8], helloMagic[:]) {
		return h, fmt.Errorf("%w: not a ringo handshake (first bytes %q)", ErrProtocol, b[:8])
	}
	h.version = binary.LittleEndian.Uint16(b[8:])
	h.purpose = Purpose(b[10])
	h.status = b[11]
	h.little = b[12]
	h.rank = int32(binary.LittleEndian.Uint32(b[13:]))
	h.size = int32(binary.LittleEndian.Uint32(b[17:]))
	copy(h.job[:], b[21:53])
	copy(h.nonce[:], b[53:85])
	h.channel = binary.LittleEndian.Uint64(b[85:])
	return h, nil
}

func newHello(id Identity, status byte) (hello, error) {
	h := hello{
		version: ProtocolVersion,
		purpose: id.Purpose,
		status:  status,
		little:  hostLittleEndian(),
		rank:    int32(id.Rank),
		size:    int32(id.Size),
		channel: id.Channel,
		job:     sha256.Sum256([]byte(id.Job)),
	}
	if _, err := rand.Read(h.nonce[:]); err != nil {
		return h, fmt.Errorf("transport: handshake nonce: %w", err)
	}
	return h, nil
}

func mac(token []byte, label string, client, server []byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write([]byte(label))
	m.Write(client)
	m.Write(server)
	return m.Sum(nil)
}

func (h hello) public() Hello {
	return Hello{Version: h.version, Purpose: h.purpose, Rank: int(h.rank), Size: int(h.size), Channel: h.channel}
}

// checkCompatible returns the status a server answers a client hello with.
func checkCompatible(own hello, peer hello) (byte, string) {
	switch {
	case peer.version != own.version:
		return statusVersion, fmt.Sprintf("protocol version %d, this side speaks %d", peer.version, own.version)
	case peer.little != own.little:
		return statusByteOrder, "peers of different byte order cannot share a job"
	case peer.job != own.job:
		return statusJob, "different job id"
	case peer.purpose != own.purpose:
		return statusPurpose, fmt.Sprintf("connection for %v, this side expects %v", peer.purpose, own.purpose)
	}
	return statusOK, ""
}

// peerName names the other side of a handshake in errors: a rendezvous
// server has no rank, and "rank -1" would only puzzle.
func peerName(h hello) string {
	if h.purpose == PurposeRendezvous && h.rank < 0 {
		return "the rendezvous server"
	}
	return fmt.Sprintf("rank %d", h.rank)
}

func statusError(status byte, who string, detail string) error {
	switch status {
	case statusBadToken:
		return fmt.Errorf("%w: %s refused our proof of the job token (is the token the same on every rank?)", ErrAuth, who)
	case statusJob:
		return fmt.Errorf("%w: %s refused the connection: %s", ErrOtherJob, who, detail)
	case statusVersion, statusByteOrder, statusPurpose:
		return fmt.Errorf("%w: %s refused the connection: %s", ErrProtocol, who, detail)
	default:
		return fmt.Errorf("transport: %s refused the connection: %s", who, detail)
	}
}

// ClientHandshake runs the dialing side of the handshake on s, which must be
// fresh. It proves this side holds id.Token and checks that the other side
// does too, before any frame is exchanged. On success it returns what the
// other side said about itself.
func ClientHandshake(s Stream, id Identity, deadline time.Time) (Hello, error) {
	_ = s.SetDeadline(deadline)
	defer s.SetDeadline(time.Time{})
	own, err := newHello(id, statusOK)
	if err != nil {
		return Hello{}, err
	}
	ownBytes := own.encode()
	if _, err := s.Write(ownBytes); err != nil {
		return Hello{}, fmt.Errorf("transport: handshake: send hello: %w", err)
	}
	peerBytes := make([]byte, helloSize+macSize)
	if _, err := io.ReadFull(s, peerBytes[:helloSize]); err != nil {
		return Hello{}, fmt.Errorf("transport: handshake: read hello: %w", err)
	}
	peer, err := decodeHello(peerBytes[:helloSize])
	if err != nil {
		return Hello{}, err
	}
	if peer.status != statusOK {
		detail := readReason(s)
		return peer.public(), statusError(peer.status, peerName(peer), detail)
	}
	if _, err := io.ReadFull(s, peerBytes[helloSize:]); err != nil {
		return Hello{}, fmt.Errorf("transport: handshake: read proof: %w", err)
	}
	want := mac(id.Token, "ringo server proof", ownBytes, peerBytes[:helloSize])
	if !hmac.Equal(want, peerBytes[helloSize:]) {
		// Answer with a proof that cannot be right (random bytes, never one
		// made with our token), so the server too learns the tokens differ.
		junk := make([]byte, macSize)
		_, _ = rand.Read(junk)
		_, _ = s.Write(junk)
		return peer.public(), fmt.Errorf("%w: %s could not prove it holds the job token (is the token the same on every rank?)", ErrAuth, peerName(peer))
	}
	if _, err := s.Write(mac(id.Token, "ringo client proof", ownBytes, peerBytes[:helloSize])); err != nil {
		return Hello{}, fmt.Errorf("transport: handshake: send proof: %w", err)
	}
	var verdict [1]byte
	if _, err := io.ReadFull(s, verdict[:]); err != nil {
		return Hello{}, fmt.Errorf("transport: handshake: read verdict: %w", err)
	}
	if verdict[0] != statusOK {
		detail := readReason(s)
		return peer.public(), statusError(verdict[0], peerName(peer), detail)
	}
	return peer.public(), nil
}

// ServerHandshake runs the accepting side of the handshake on s. accept is
// called once the client has proven it holds the token; an error from it
// refuses the client with that error's text.
func ServerHandshake(s Stream, id Identity, deadline time.Time, accept func(Hello) error) (Hello, error) {
	_ = s.SetDeadline(deadline)
	defer s.SetDeadline(time.Time{})
	peerBytes := make([]byte, helloSize)
	// The magic first: a stranger speaking another protocol is turned away
	// after 8 bytes, not held until a full hello or the deadline.
	if _, err := io.ReadFull(s, peerBytes[:len(helloMagic)]); err != nil {
		return Hello{}, fmt.Errorf("transport: handshake: read hello: %w", err)
	}
	if !bytes.Equal(peerBytes[:len(helloMagic)], helloMagic[:]) {
		return Hello{}, fmt.Errorf("%w: not a ringo handshake (first bytes %q)", ErrProtocol, peerBytes[:len(helloMagic)])
	}
	if _, err := io.ReadFull(s, peerBytes[len(helloMagic):]); err != nil {
		return Hello{}, fmt.Errorf("transport: handshake: read hello: %w", err)
	}
	peer, err := decodeHello(peerBytes)
	if err != nil {
		return Hello{}, err
	}
	status, detail := statusOK, ""
	own, err := newHello(id, statusOK)
	if err != nil {
		return Hello{}, err
	}
	if status, detail = checkCompatible(own, peer); status != statusOK {
		own.status = status
		_, _ = s.Write(own.encode())
		writeReason(s, detail)
		return peer.public(), statusError(status, "this side", detail)
	}
	ownBytes := own.encode()
	msg := append(ownBytes, mac(id.Token, "ringo server proof", peerBytes, ownBytes)...)
	if _, err := s.Write(msg); err != nil {
		return Hello{}, fmt.Errorf("transport: handshake: send hello: %w", err)
	}
	proof := make([]byte, macSize)
	if _, err := io.ReadFull(s, proof); err != nil {
		return peer.public(), fmt.Errorf("transport: handshake: read proof: %w", err)
	}
	if !hmac.Equal(proof, mac(id.Token, "ringo client proof", peerBytes, ownBytes)) {
		_, _ = s.Write([]byte{statusBadToken})
		writeReason(s, "wrong job token")
		return peer.public(), fmt.Errorf("%w: a peer claiming rank %d did not prove it holds the job token", ErrAuth, peer.rank)
	}
	if accept != nil {
		if err := accept(peer.public()); err != nil {
			_, _ = s.Write([]byte{statusRefused})
			writeReason(s, err.Error())
			return peer.public(), err
		}
	}
	if _, err := s.Write([]byte{statusOK}); err != nil {
		return peer.public(), fmt.Errorf("transport: handshake: send verdict: %w", err)
	}
	return peer.public(), nil
}

func writeReason(w io.Writer, reason string) {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	_, _ = w.Write(append([]byte{byte(len(reason))}, reason...))
}

func readReason(r io.Reader) string {
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "(no reason given)"
	}
	b := make([]byte, n[0])
	if _, err := io.ReadFull(r, b); err != nil {
		return "(reason cut short)"
	}
	return string(b)
}

// Package transport carries ringo's frames between two ranks: a byte stream
// (TCP, or an in-process pipe for the mem transport), an authenticated
// handshake at connection start, a fixed frame header that names the
// communicator, operation and signature of every payload, and a Link that
// sends queued frames in order and receives payloads straight into buffers
// the caller posted in advance.
//
// It also makes the connections: a Connector hands out one stream per
// (channel, peer rank), from a Mesh over a Network (TCP, TCP with TLS, QUIC:
// listening, dialing, the certificates and the job-token handshake), a
// PipeHub (in-process pipes), or PerPeer (a Connector per peer: a mixed
// mesh). Each Network says what its links cost, for the cost model that
// picks algorithms. AuthListener and DialAuth make authenticated streams
// over any Network for a client and a server that are not ranks of one job
// (a federated server and its clients); the Mesh makes its own with them.
//
// Nothing above this package touches a socket; nothing in it knows what a
// collective does with the bytes.
package transport

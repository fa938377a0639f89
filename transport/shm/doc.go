// Package shm connects the ranks of one host through shared memory: each
// direction of a link is a single-producer, single-consumer byte ring in a
// segment of /dev/shm that both processes map. The framing on top is
// transport's, unchanged (transport.Conn and transport.Link: the same
// headers, signature checks, probes, heartbeats and aborts as TCP), so a
// payload crosses with one copy on each side and no system call, where TCP
// loopback takes a system call and a kernel copy each way.
//
// # Connections
//
// A Connector (Over) makes each stream in three steps, for a (channel,
// peer) both ranks ask for:
//
//  1. it asks its control Connector for a stream to the peer: a
//     transport.Mesh over Unix-domain sockets in the abstract namespace
//     (ControlNetwork), whose job-token handshake authenticates both sides;
//  2. over that stream each side creates the segment it will write (mode
//     0600, O_EXCL, a name with 128 random bits), sends its name, maps the
//     peer's and unlinks it: once both ends have mapped a segment no name
//     is left in /dev/shm, so a process killed later leaves nothing behind;
//  3. it keeps the control stream open and reads from it: shared memory
//     has no end-of-file, the socket does. A peer that exits or is killed
//     closes it (the kernel does), and every wait on the rings wakes with
//     an error within a scheduling delay.
//
// A segment's name travels only over the authenticated stream, so a local
// process without the job token never learns one; and a name exists only
// between its creation and the peer's mapping (one round trip), the one
// window in which a killed creator would leave a segment behind.
//
// # Waiting
//
// A side that finds its ring empty (reader) or full (writer) spins for a
// bounded time (Options.Spin), yielding to the other goroutines of its
// process and, every few polls, its core to other processes; then it
// sleeps. A sleeper says so in the segment, and the side that publishes
// next rings it awake with a byte on the control stream, which reaches it
// through the network poller. A sleeper costs no CPU, so more ranks than
// cores still make progress. (Not a futex in the segment: a goroutine in
// a futex system call keeps its process's right to run Go code for up to
// milliseconds, and with one such right per rank, as on an oversubscribed
// machine, the rank's other goroutines wait that long; see Stream.sleep.)
//
// # Distrust
//
// The peer can write anything into the segments it shares. This side keeps
// its own positions in its own memory and only reads the peer's; a peer
// position that is not within one ring's capacity of this side's is a
// protocol error (transport.ErrProtocol), and every copy is masked into the
// ring, so garbage never causes an out-of-bounds access. Garbage in the
// data fails the frame checks of transport.Conn.
//
// The package is Linux-only (/dev/shm, abstract sockets, sched_yield);
// elsewhere Supported reports false and jobs use sockets.
package shm

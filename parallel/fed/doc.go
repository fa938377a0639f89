// Package fed is federated learning on ringo's transport layer: a server
// that runs rounds of federated averaging for clients that join and leave
// at any time, whose data never leaves them, and, with secure aggregation,
// whose individual updates the server never sees.
//
// Unlike the rest of package parallel it does not run on a communicator:
// a communicator is a fixed set of ranks, while a federation's membership
// changes every round. The server listens (TCP, TCP+TLS or QUIC); clients
// dial it and prove the job token in the same HMAC challenge-response
// handshake ranks use (transport.PurposeFederated), so strangers and
// clients with another token or job are refused before they send a byte of
// protocol.
//
//	srv, err := fed.NewServer(ctx, fed.ServerConfig{
//		Addr: ":7070", Token: token, Job: "mnist",
//		Weights: initial, Rounds: 50,
//		Strategy: &fed.FedAvg{FractionFit: 0.5, MinFitClients: 5},
//		Secure:   &fed.SecureAggregation{},
//		Evaluate: evaluate, CheckpointPath: "server.ckpt",
//	})
//	...
//	err = srv.Run(ctx)
//
//	client, err := fed.NewClient(fed.ClientConfig{
//		Addr: "server:7070", Token: token, Job: "mnist", Name: "hospital-3",
//		Fit: func(ctx context.Context, ins *fed.FitIns) (fed.FitRes, error) {
//			// train a copy of ins.Weights on the local data
//			return fed.FitRes{Weights: trained, Examples: n}, nil
//		},
//	})
//	...
//	err = client.Run(ctx) // until the server ends training, or ctx ends
//
// # Rounds
//
// Each round the Strategy (FedAvg, FedProx, or the caller's own) samples
// clients among those connected (FedAvg: a fraction FractionFit of them,
// at least MinFitClients; the server waits while fewer are connected),
// the server sends them the global weights and the strategy's config, and
// waits at most RoundTimeout for their answers. An answer is the client's
// trained weights and its sample count n_i. The round completes with the
// answers that came, if they number at least the plan's MinResults; the
// strategy turns them into the next global weights (FedAvg: the weighted
// mean Σ n_i·w_i / Σ n_i). Otherwise the round is tried again, as a new
// attempt, at most MaxAttempts times. Between rounds the server evaluates
// the global weights with the caller's Evaluate and saves a checkpoint
// (package checkpoint: the weights, the round and the sampling generator's
// state); a server started on an existing checkpoint resumes after its
// round, and its clients, which retry with backoff, reconnect by
// themselves.
//
// The weighted mean in the clear is computed in float64: for each element,
// ((n_1·w_1 + n_2·w_2) + n_3·w_3) + ... over the clients in ascending
// (Name, ID) order, divided by Σ n_i, rounded to float32 once. Each
// product is exact; when the sums are too (weights with few significant
// bits), the result is the exact weighted mean rounded once, bitwise, as
// the tests check.
//
// # Failures
//
// Every attempt has a task id, random and never reused; every client
// message carries it. A client that disconnects, reports a failure, sends
// a message that does not decode, an update of the wrong length, a NaN or
// infinite weight or a zero sample count, or nothing in time is dropped
// from the round with the reason logged (slog, level Warn) and listed in
// the round's RoundSummary.Failures; its answer never reaches the
// aggregate. Bytes that are not a frame of the protocol, or a frame longer
// than its kind can be, also close the connection. A message of another
// task (a result that arrives after its round is over, or after the
// attempt was retried) is refused and logged.
//
// A client whose connection fails reconnects after a backoff that doubles
// from MinBackoff to MaxBackoff (with jitter) and resets once it is
// admitted again; a server that refuses the token, or whose certificate is
// not the expected one, ends the client's Run instead. A client leaves by
// cancelling Run's context; a task in progress is abandoned (its Fit's
// context ends), and the server drops it from the round. Reconnecting, a
// client gets a new ID; its Name stays.
//
// # Secure aggregation
//
// With ServerConfig.Secure, the server learns the sum of the surviving
// clients' weighted updates and of their sample counts, and nothing else
// about any one of them (a simplified Bonawitz et al., CCS 2017). Client u
// sends, instead of its weights,
//
//	y_u = n_u·round(x_u·2^ScaleBits) ‖ n_u  +  PRG(b_u)  +  Σ_{v>u} PRG(s_uv)  −  Σ_{v<u} PRG(s_uv)   (mod 2^64)
//
// where x_u is its update (its weights minus the global weights, each
// element clipped to ±Clip), n_u its sample count (appended as the last
// element), b_u a self seed of its own, s_uv the seed it shares with
// client v, and PRG(s) AES-256-CTR keyed by s, read as little-endian
// uint64s. The pair masks cancel in the sum over all clients. A round:
//
//  1. The server sends the weights and the fixed-point parameters to the
//     sampled clients. Each makes a fresh X25519 key pair (crypto/ecdh)
//     and a fresh random b_u, and sends its public key and a commitment
//     SHA-256(b_u) before it trains. The server waits at most KeyTimeout
//     for the keys; the clients that sent one are the round's.
//  2. The server sends every such client the list of their ids and keys.
//     Each pair u, v derives s_uv from their X25519 secret (SHA-256 with
//     the task id and both ids), and expands its masks while it trains;
//     after training, each client sends y_u.
//  3. The survivors U are the clients whose y_u came within RoundTimeout;
//     the others, D, dropped. The server tells every survivor U and D.
//     Each survivor checks that U and D partition the round's clients,
//     that it is in U, and that U has at least MinSurvivors members, and
//     only then reveals b_u and its pair seeds s_uv with every v in D.
//  4. The server adds the y_u of U, subtracts each PRG(b_u) and each
//     revealed PRG(s_uv) (the masks between survivors cancel), and decodes
//     Aggregate.Mean = g + Σ n_u·q_u·2^−ScaleBits / Σ n_u.
//
// A client that drops after the keys are agreed but before its masked
// update arrives is thus removed (step 3). One that drops after sending
// its masked update but before revealing b_u cannot be: without b_u the
// sum cannot be unmasked, so the attempt fails and the round is tried
// again without it (full Bonawitz secret-shares b_u among the clients so
// that t of them can reveal it instead; that is not done here).
//
// Fixed point. With ScaleBits s (default 24), each update element is
// rounded to a multiple of 2^−s: the mean update differs from the exact
// one by at most 2^−(s+1) (a weighted mean of errors of at most 2^−(s+1)
// each), and the new weights from the clear FedAvg's by at most that plus
// one float32 rounding (and float64 roundings far below it), as the tests
// check; when the updates are multiples of 2^−s and their weighted mean is
// exact, the two are bitwise equal. Updates beyond ±Clip
// (default 16) are clipped (the client logs how many elements), and a
// client's sample count is capped at MaxExamples (default 2^20). The sum
// of a round's clients must fit in 63 bits: k·MaxExamples·Clip·2^s < 2^63,
// 32767 clients with the defaults; the server refuses larger rounds.
// Masked values travel as uint64: a secure update is twice the bytes of
// one in the clear.
//
// Threat model. The server is honest but curious: it follows the protocol
// and keeps everything it receives. It learns the sum of the survivors'
// weighted updates, the sum of their sample counts, who was sampled, who
// survived, and when each message came. It does not learn any one
// client's update or sample count, even for a client whose masked update
// arrives after it was declared dropped: the survivors then reveal their
// pair seeds with that client, but its self mask still hides its update,
// because a client reveals b_u only when it is told it survived (the tests
// record every byte the server reads and look for each update in every
// plain encoding, and strip every mask whose seed the server received). It
// also learns nothing across rounds: keys and seeds are fresh per attempt.
//
// Not protected:
//   - An actively malicious server: it can substitute its own public keys
//     (there is no PKI, nor signatures on the keys) and so learn every
//     pair seed, or tell different clients different survivor sets.
//   - A server colluding with clients: with all but one survivor's updates
//     from its accomplices, the sum gives away the last one. MinSurvivors
//     (at least 2, and at least the round's MinResults) bounds only the
//     honest case.
//   - The clients' inputs: under secure aggregation the server cannot
//     check an update's values (only its length), so a malicious client
//     can skew the aggregate within ±Clip per element. NaN cannot be
//     encoded; a client refuses to send it.
//   - The sum itself, and anything it implies (with two survivors, each
//     learns the other's update from the next global weights).
//   - Metrics (FitRes.Metrics) are not sent under secure aggregation.
//
// Over plain TCP a network eavesdropper sees what the server sees (masked
// updates, revealed seeds; in the clear, the updates themselves); use TLS
// or QUIC where that matters. Key agreement costs each client one X25519
// operation and one mask expansion per other client, O(n²) over a round
// of n clients, and the server one mask expansion per (survivor, dropped
// client) pair; README.md in this directory has the measurements, where
// that stops scaling, and the remedy (SecAgg+: a k-regular graph of pairs).
//
// # Layering
//
// The package sits beside the other training APIs but reaches below
// package collective, to package transport, for links that come and go.
// It never listens, dials or handshakes itself: wire.go, its one seam with
// transport, names the Network of the configured Transport, takes
// authenticated streams from transport's AuthListener (the server) and
// DialAuth (a client), and frames messages. The wire format of each
// message is in message.go.
package fed

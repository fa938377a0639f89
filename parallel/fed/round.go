package fed

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// errAttemptFailed: an attempt at a round ended with too few results; the
// round is tried again.
var errAttemptFailed = errors.New("too few results")

// Run runs rounds until the configured number is done, then tells the
// clients that training is over and returns nil. It returns early with
// ctx's error, ErrClosed when the server is closed, ErrRoundFailed when a
// round failed MaxAttempts times, or an error of the Strategy, Evaluate or
// the checkpoint. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("fed: Run was already called")
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(s.ctx, func() { cancel(ErrClosed) })
	defer stop()

	if s.round == 0 && s.cfg.Evaluate != nil {
		metrics, err := s.cfg.Evaluate(ctx, 0, slices.Clone(s.global))
		if err != nil {
			return s.stopped(ctx, fmt.Errorf("fed: evaluating the initial weights: %w", err))
		}
		s.publish(RoundSummary{Round: 0, Metrics: metrics})
	}
	for s.round < s.cfg.Rounds {
		// A round whose clients are all ready can finish without ever
		// blocking on ctx: a cancelled Run must not start another.
		if ctx.Err() != nil {
			return s.stopped(ctx, ctx.Err())
		}
		if err := s.runRound(ctx, s.round+1); err != nil {
			return s.stopped(ctx, err)
		}
	}
	s.farewell(ctx, "training is over")
	return nil
}

// stopped is the error Run returns: the cause of ctx's end if it ended.
func (s *Server) stopped(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return err
}

// publish records a round's summary for readers and OnRound.
func (s *Server) publish(sum RoundSummary) {
	s.mu.Lock()
	s.weights = append(s.weights[:0], s.global...)
	s.completed = s.round
	s.history = append(s.history, sum)
	s.mu.Unlock()
	if s.cfg.OnRound != nil {
		s.cfg.OnRound(sum)
	}
}

// runRound runs attempts at round r until one completes, then updates the
// global weights, evaluates and checkpoints them.
func (s *Server) runRound(ctx context.Context, r int) error {
	start := time.Now()
	var agg *Aggregate
	number := 1
	for ; ; number++ {
		plan, err := s.plan(ctx, r)
		if err != nil {
			return err
		}
		task, err := newTask()
		if err != nil {
			return err
		}
		a := newAttempt(r, number, task, plan, s.log)
		s.remember(a)
		if s.secure != nil {
			agg, err = s.secureAttempt(ctx, a)
		} else {
			agg, err = s.plainAttempt(ctx, a)
		}
		if err == nil {
			break
		}
		if !errors.Is(err, errAttemptFailed) {
			return err
		}
		s.log.Warn("fed: round attempt failed", "round", r, "attempt", number, "err", err)
		if number >= s.cfg.MaxAttempts {
			return fmt.Errorf("%w: round %d failed %d times; the last: %w", ErrRoundFailed, r, number, err)
		}
	}
	next, err := s.cfg.Strategy.AggregateFit(r, s.global, agg)
	if err != nil {
		return fmt.Errorf("fed: aggregating round %d: %w", r, err)
	}
	if len(next) != s.dims {
		return fmt.Errorf("fed: aggregating round %d: the strategy returned %d weights, the model has %d", r, len(next), s.dims)
	}
	if i := firstNonFinite(next); i >= 0 {
		return fmt.Errorf("fed: aggregating round %d: the strategy returned weight %d = %g", r, i, next[i])
	}
	copy(s.global, next)
	s.round = r
	sum := RoundSummary{
		Round:    r,
		Attempts: number,
		Clients:  agg.Clients,
		Failures: agg.Failures,
		Examples: agg.Examples,
	}
	if s.cfg.Evaluate != nil {
		if sum.Metrics, err = s.cfg.Evaluate(ctx, r, slices.Clone(s.global)); err != nil {
			return fmt.Errorf("fed: evaluating round %d: %w", r, err)
		}
	}
	if err := s.save(); err != nil {
		return err
	}
	sum.Duration = time.Since(start)
	s.log.Info("fed: round done", "round", r, "attempts", number, "clients", len(agg.Clients),
		"dropped", len(agg.Failures), "examples", agg.Examples, "metrics", sum.Metrics, "duration", sum.Duration)
	s.publish(sum)
	return nil
}

func firstNonFinite(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}

// attempt is one try at a round: one task id, one plan.
type attempt struct {
	round, number int
	task          uint64
	plan          FitPlan
	sampled       map[uint64]bool
	dropped       map[uint64]bool // failed, in any phase
	failures      []Failure
	log           *slog.Logger
}

func newAttempt(round, number int, task uint64, plan FitPlan, log *slog.Logger) *attempt {
	a := &attempt{round: round, number: number, task: task, plan: plan, log: log,
		sampled: make(map[uint64]bool, len(plan.Clients)), dropped: make(map[uint64]bool)}
	for _, c := range plan.Clients {
		a.sampled[c.ID] = true
	}
	return a
}

// fail drops a client from the attempt, saying why.
func (a *attempt) fail(c ClientInfo, reason string) {
	a.dropped[c.ID] = true
	a.failures = append(a.failures, Failure{Client: c, Reason: reason})
	a.log.Warn("fed: dropped a client from the round", "round", a.round, "attempt", a.number, "client", c, "reason", reason)
}

// reasons summarises the failures, for an attempt's error.
func (a *attempt) reasons() string {
	const shown = 3
	var b strings.Builder
	for i, f := range a.failures {
		if i == shown {
			fmt.Fprintf(&b, "; and %d more", len(a.failures)-shown)
			break
		}
		fmt.Fprintf(&b, "; %v %s", f.Client, f.Reason)
	}
	return b.String()
}

// remember notes a task's round, so that a late message for it can be
// named in the log; only the last few rounds are kept.
func (s *Server) remember(a *attempt) {
	for t, r := range s.recent {
		if r < a.round-4 {
			delete(s.recent, t)
		}
	}
	s.recent[a.task] = a.round
}

// connected lists the joined clients in (Name, ID) order.
func (s *Server) connected() []ClientInfo {
	c := make([]ClientInfo, 0, len(s.sessions))
	for _, ss := range s.sessions {
		c = append(c, ss.info)
	}
	sortClients(c)
	return c
}

// plan asks the strategy for round r's plan, waiting for clients while it
// says there are too few.
func (s *Server) plan(ctx context.Context, r int) (FitPlan, error) {
	waiting := false
	for {
		// Take in what sessions said since the last attempt: the plan is
		// made with every client that has joined by now.
		for range len(s.events) {
			s.dispatch(nil, <-s.events, 0, nil, nil)
		}
		plan, err := s.cfg.Strategy.ConfigureFit(r, s.connected(), s.rng)
		if err == nil {
			if err := s.checkPlan(plan); err != nil {
				return FitPlan{}, fmt.Errorf("fed: the strategy's plan of round %d: %w", r, err)
			}
			return plan, nil
		}
		if !errors.Is(err, ErrTooFewClients) {
			return FitPlan{}, fmt.Errorf("fed: planning round %d: %w", r, err)
		}
		if !waiting {
			s.log.Info("fed: waiting for clients", "round", r, "why", err)
			waiting = true
		}
		select {
		case ev := <-s.events:
			s.dispatch(nil, ev, 0, nil, nil)
		case <-ctx.Done():
			return FitPlan{}, context.Cause(ctx)
		}
	}
}

func (s *Server) checkPlan(p FitPlan) error {
	if len(p.Clients) == 0 {
		return errors.New("no clients")
	}
	seen := make(map[uint64]bool, len(p.Clients))
	for _, c := range p.Clients {
		if _, ok := s.sessions[c.ID]; !ok {
			return fmt.Errorf("client %v is not connected", c)
		}
		if seen[c.ID] {
			return fmt.Errorf("client %v is in it twice", c)
		}
		seen[c.ID] = true
	}
	need := p.MinResults
	if s.secure != nil {
		need = max(need, s.secure.MinSurvivors)
		if limit := s.secure.params().maxClients(); len(p.Clients) > limit {
			return fmt.Errorf("%d clients, but the fixed point of secure aggregation holds the sum of at most %d (lower Clip, ScaleBits or MaxExamples)", len(p.Clients), limit)
		}
	}
	if p.MinResults < 1 || need > len(p.Clients) {
		return fmt.Errorf("%d clients, and %d results needed to complete the round", len(p.Clients), need)
	}
	return nil
}

// send queues one payload for each of the clients to that has not failed
// yet; a client no longer connected fails. It returns the sessions the
// payload was queued for.
func (s *Server) send(a *attempt, k msgKind, payload []byte, to []ClientInfo) map[uint64]*session {
	pending := make(map[uint64]*session, len(to))
	for _, c := range to {
		if a.dropped[c.ID] {
			continue
		}
		ss, ok := s.sessions[c.ID]
		if !ok || !ss.post(outgoing{kind: k, task: a.task, payload: payload}) {
			a.fail(c, fmt.Sprintf("disconnected before the %v message", k))
			continue
		}
		pending[c.ID] = ss
	}
	return pending
}

// collect handles events until every pending client has answered with a
// message of kind want (given to accept, whose error fails the client) or
// failed, or until the deadline, when the clients still pending fail.
func (s *Server) collect(ctx context.Context, a *attempt, want msgKind, pending map[uint64]*session, deadline time.Time, accept func(*session, message) error) error {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for len(pending) > 0 {
		select {
		case ev := <-s.events:
			s.dispatch(a, ev, want, pending, accept)
		case <-timer.C:
			for _, ss := range pending {
				a.fail(ss.info, fmt.Sprintf("sent no %v message in time", want))
			}
			clear(pending)
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// dispatch applies an event: to the table of connected clients, and, for
// a message of the attempt a (nil between attempts) from a client it
// awaits, to the attempt.
func (s *Server) dispatch(a *attempt, ev event, want msgKind, pending map[uint64]*session, accept func(*session, message) error) {
	info := ev.sess.info
	_, owes := pending[info.ID]
	switch {
	case ev.joined:
		s.sessions[info.ID] = ev.sess
	case ev.ended:
		delete(s.sessions, info.ID)
		if owes {
			delete(pending, info.ID)
			a.fail(info, "disconnected: "+ev.err.Error())
		} else {
			s.log.Debug("fed: client left", "client", info, "err", ev.err)
		}
	case ev.err != nil:
		if owes {
			delete(pending, info.ID)
			a.fail(info, "sent garbage: "+ev.err.Error())
		} else {
			s.log.Warn("fed: ignored a malformed message", "client", info, "err", ev.err)
		}
	default:
		task := taskOf(ev.msg)
		if a == nil || task != a.task {
			s.refuseLate(a, info, ev.msg, task)
			return
		}
		if !owes {
			// A client of the attempt that gives up between phases (its
			// key sent, its training failed) is out of the later ones.
			if f, ok := ev.msg.(*failedMsg); ok && a.sampled[info.ID] && !a.dropped[info.ID] {
				a.fail(info, "reported a failure: "+f.Reason)
				return
			}
			s.log.Info("fed: refused a late or unexpected message", "round", a.round, "client", info, "message", ev.msg.kind(), "awaiting", want)
			return
		}
		delete(pending, info.ID)
		switch m := ev.msg.(type) {
		case *failedMsg:
			a.fail(info, "reported a failure: "+m.Reason)
		default:
			if m.kind() != want {
				a.fail(info, fmt.Sprintf("sent a %v message where a %v was due", m.kind(), want))
			} else if err := accept(ev.sess, m); err != nil {
				a.fail(info, err.Error())
			}
		}
	}
}

// refuseLate logs a message for a task other than the current one: a
// result from an attempt that is over, which never reaches an aggregate.
func (s *Server) refuseLate(a *attempt, c ClientInfo, m message, task uint64) {
	now := s.round + 1
	if a != nil {
		now = a.round
	}
	if r, ok := s.recent[task]; ok {
		s.log.Info("fed: refused a late message", "client", c, "message", m.kind(), "of_round", r, "round", now)
	} else {
		s.log.Warn("fed: refused a message for an unknown task", "client", c, "message", m.kind(), "task", task, "round", now)
	}
}

// plainAttempt runs an attempt in the clear: the clients send their
// trained weights.
func (s *Server) plainAttempt(ctx context.Context, a *attempt) (*Aggregate, error) {
	deadline := time.Now().Add(s.cfg.RoundTimeout)
	payload := encode(&fitMsg{Task: a.task, Round: uint32(a.round), Config: a.plan.Config, Weights: s.global})
	pending := s.send(a, kindFit, payload, a.plan.Clients)
	var results []FitResult
	err := s.collect(ctx, a, kindUpdate, pending, deadline, func(ss *session, m message) error {
		u := m.(*updateMsg)
		if err := s.checkUpdate(u); err != nil {
			return err
		}
		results = append(results, FitResult{Client: ss.info, Weights: u.Weights, Examples: int(u.Examples), Metrics: u.Metrics})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(results) < a.plan.MinResults {
		return nil, fmt.Errorf("%w: %d of %d clients answered, %d needed%s", errAttemptFailed, len(results), len(a.plan.Clients), a.plan.MinResults, a.reasons())
	}
	slices.SortFunc(results, func(x, y FitResult) int { return compareClients(x.Client, y.Client) })
	agg := &Aggregate{Mean: make([]float32, s.dims), Results: results, Failures: a.failures}
	agg.Examples = weightedMean(agg.Mean, results)
	for _, r := range results {
		agg.Clients = append(agg.Clients, r.Client)
	}
	return agg, nil
}

// maxExamples bounds a client's sample count in the clear, so that sums
// of counts stay exact in float64.
const maxExamples = 1 << 40

func (s *Server) checkUpdate(u *updateMsg) error {
	switch {
	case len(u.Weights) != s.dims:
		return fmt.Errorf("sent %d weights, the model has %d", len(u.Weights), s.dims)
	case u.Examples == 0 || u.Examples > maxExamples:
		return fmt.Errorf("sent a sample count of %d", u.Examples)
	}
	if i := firstNonFinite(u.Weights); i >= 0 {
		return fmt.Errorf("sent weight %d = %g", i, u.Weights[i])
	}
	return nil
}

// weightedMean writes Σ n_i·w_i / Σ n_i into out and returns Σ n_i. Each
// element is summed in float64 in the order of results, from zero:
// ((n_1·w_1 + n_2·w_2) + n_3·w_3) + ..., divided once and rounded to
// float32 once. Products n_i·w_i are exact (n_i < 2^40, w_i has 24
// significant bits), so with updates whose sums are exact in float64 the
// result is the exact weighted mean rounded once, whatever the order.
func weightedMean(out []float32, results []FitResult) int64 {
	acc := make([]float64, len(out))
	var total int64
	for _, r := range results {
		n := float64(r.Examples)
		for j, w := range r.Weights {
			acc[j] += n * float64(w)
		}
		total += int64(r.Examples)
	}
	for j, v := range acc {
		out[j] = float32(v / float64(total))
	}
	return total
}

// secureAttempt runs an attempt with secure aggregation (see the package
// documentation): keys, masked updates, unmasking.
func (s *Server) secureAttempt(ctx context.Context, a *attempt) (*Aggregate, error) {
	sa := s.secure
	need := max(a.plan.MinResults, sa.MinSurvivors)
	params := sa.params()
	params.MinSurvivors = uint32(need)
	start := time.Now()

	// 1. The weights, and each client's fresh public key back.
	payload := encode(&fitMsg{Task: a.task, Round: uint32(a.round), Config: a.plan.Config, Secure: params, Weights: s.global})
	pending := s.send(a, kindFit, payload, a.plan.Clients)
	keys := make(map[uint64]*publicKeyMsg)
	infos := make(map[uint64]ClientInfo)
	err := s.collect(ctx, a, kindPublicKey, pending, start.Add(sa.KeyTimeout), func(ss *session, m message) error {
		keys[ss.info.ID], infos[ss.info.ID] = m.(*publicKeyMsg), ss.info
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(keys) < need {
		return nil, fmt.Errorf("%w: %d of %d clients sent their keys, %d needed%s", errAttemptFailed, len(keys), len(a.plan.Clients), need, a.reasons())
	}

	// 2. Everyone's keys to everyone; masked updates back.
	members := make([]ClientInfo, 0, len(keys))
	peers := make([]peerKey, 0, len(keys))
	for id, k := range keys {
		peers = append(peers, peerKey{ID: id, Key: k.Key})
		members = append(members, infos[id])
	}
	slices.SortFunc(peers, func(x, y peerKey) int { return cmp.Compare(x.ID, y.ID) })
	pending = s.send(a, kindKeys, encode(&keysMsg{Task: a.task, Peers: peers}), members)
	sum := make([]uint64, s.dims+1)
	received := make(map[uint64]bool)
	err = s.collect(ctx, a, kindMasked, pending, start.Add(s.cfg.RoundTimeout), func(ss *session, m message) error {
		v := m.(*maskedMsg).Vector
		if len(v) != len(sum) {
			return fmt.Errorf("sent a masked update of %d values, the model needs %d", len(v), len(sum))
		}
		for j, x := range v { // modulo 2^64: the order does not matter
			sum[j] += x
		}
		received[ss.info.ID] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	var survivors, dropped []uint64
	for _, p := range peers {
		if received[p.ID] {
			survivors = append(survivors, p.ID)
		} else {
			dropped = append(dropped, p.ID)
		}
	}
	if len(survivors) < need {
		return nil, fmt.Errorf("%w: %d of %d clients sent masked updates, %d needed%s", errAttemptFailed, len(survivors), len(a.plan.Clients), need, a.reasons())
	}

	// 3. Who survived; the seeds that unmask their sum back.
	var clients []ClientInfo
	for _, id := range survivors {
		clients = append(clients, infos[id])
	}
	pending = s.send(a, kindUnmask, encode(&unmaskMsg{Task: a.task, Survivors: survivors, Dropped: dropped}), clients)
	reveals := make(map[uint64]*revealMsg)
	err = s.collect(ctx, a, kindReveal, pending, time.Now().Add(sa.UnmaskTimeout), func(ss *session, m message) error {
		r := m.(*revealMsg)
		if selfCommit(a.task, r.SelfSeed) != keys[ss.info.ID].Commit {
			return errors.New("revealed a self seed that is not the one it committed to")
		}
		if len(r.Pairs) != len(dropped) {
			return fmt.Errorf("revealed %d pair seeds for %d dropped clients", len(r.Pairs), len(dropped))
		}
		for i, p := range r.Pairs {
			if p.ID != dropped[i] {
				return fmt.Errorf("revealed a pair seed with client %d, which did not drop", p.ID)
			}
		}
		reveals[ss.info.ID] = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(reveals) < len(survivors) {
		var missing []string
		for _, id := range survivors {
			if reveals[id] == nil {
				missing = append(missing, infos[id].String())
			}
		}
		return nil, fmt.Errorf("%w: %s sent a masked update but not the seeds to unmask it; the sum cannot be unmasked without them",
			errAttemptFailed, strings.Join(missing, ", "))
	}

	// 4. Remove the masks: each survivor's own, and those it shares with
	// the dropped clients (the masks between survivors cancel).
	var removals []maskRemoval
	for _, id := range survivors {
		r := reveals[id]
		removals = append(removals, maskRemoval{selfMaskKey(a.task, r.SelfSeed), true})
		for _, p := range r.Pairs {
			removals = append(removals, maskRemoval{p.Seed, pairAdds(id, p.ID)})
		}
	}
	removeMasks(sum, removals)
	agg := &Aggregate{Mean: make([]float32, s.dims), Clients: clients, Failures: a.failures}
	examples, err := params.decodeMean(agg.Mean, sum, s.global, len(survivors))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errAttemptFailed, err)
	}
	agg.Examples = int64(examples)
	sortClients(agg.Clients)
	return agg, nil
}

// maskRemoval is one mask to take out of the sum.
type maskRemoval struct {
	key      [32]byte
	subtract bool // the client added it
}

// removeMasks applies the removals to sum, spread over the CPUs: each
// worker expands its share of the masks into a vector of its own, and the
// vectors are added to sum (modulo 2^64, so the order does not matter).
// The server pays one expansion per survivor and one per (survivor,
// dropped client) pair.
func removeMasks(sum []uint64, removals []maskRemoval) {
	workers := min(runtime.GOMAXPROCS(0), len(removals))
	if workers <= 1 {
		var m masker
		for _, r := range removals {
			m.apply(sum, r.key, r.subtract)
		}
		return
	}
	partials := make([][]uint64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		partials[w] = make([]uint64, len(sum))
		wg.Add(1)
		go func() {
			defer wg.Done()
			var m masker
			for i := w; i < len(removals); i += workers {
				m.apply(partials[w], removals[i].key, removals[i].subtract)
			}
		}()
	}
	wg.Wait()
	for _, p := range partials {
		for j, v := range p {
			sum[j] += v
		}
	}
}

// farewell tells every connected client that training is over and waits,
// at most SendTimeout, for the messages to be written.
func (s *Server) farewell(ctx context.Context, reason string) {
	payload := encode(&byeMsg{Over: true, Reason: reason})
	type posted struct {
		ss   *session
		sent chan struct{}
	}
	// Every admitted session, including those whose join Run has not
	// seen; those admitted from now on are told at once (admit).
	s.liveMu.Lock()
	s.over = reason
	sessions := slices.Collect(maps.Values(s.live))
	s.liveMu.Unlock()
	var all []posted
	for _, ss := range sessions {
		p := posted{ss, make(chan struct{})}
		if ss.post(outgoing{kind: kindBye, payload: payload, sent: p.sent}) {
			all = append(all, p)
		}
	}
	timer := time.NewTimer(s.cfg.SendTimeout)
	defer timer.Stop()
	for _, p := range all {
		select {
		case <-p.sent:
		case <-p.ss.done:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

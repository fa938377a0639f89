package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// buildCommands builds ringrun and this command into dir.
func buildCommands(t *testing.T, dir string) (ringrun, mnistBin string) {
	t.Helper()
	ringrun, mnistBin = filepath.Join(dir, "ringrun"), filepath.Join(dir, "mnist")
	for pkg, out := range map[string]string{"../../cmd/ringrun": ringrun, ".": mnistBin} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		b, err := cmd.CombinedOutput()
		require.NoError(t, err, "go build %s: %s", pkg, b)
	}
	return ringrun, mnistBin
}

// rankPID finds the process of a rank among parent's children, by the
// RINGO_RANK in its environment.
func rankPID(t *testing.T, parent, rank int) int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	require.NoError(t, err)
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 2 || fields[1] != strconv.Itoa(parent) {
			continue
		}
		pid, _ := strconv.Atoi(strings.Fields(s)[0])
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			if kv == "RINGO_RANK="+strconv.Itoa(rank) {
				return pid
			}
		}
	}
	t.Fatalf("no child of %d is rank %d", parent, rank)
	return 0
}

// TestRestartAfterSIGKILLEndsWithTheSameParams: under ringrun
// --max-restarts 1, a rank killed with SIGKILL in the middle of the second
// epoch makes ringrun restart the job, which resumes from the checkpoint of
// the first epoch and ends with the parameters of a run that was never
// interrupted, bit for bit. The binaries run outside the module, so they
// find MNIST through the module version their build recorded.
func TestRestartAfterSIGKILLEndsWithTheSameParams(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real jobs")
	}
	bin := t.TempDir()
	ringrun, mnistBin := buildCommands(t, bin)
	// 30000 samples in batches of 64: 469 steps an epoch. The kill comes
	// at step 480, with most of the second epoch still to go.
	const killAt = 480
	args := []string{"-mode", "ddp", "-train-samples", "30000", "-batch", "64", "-hidden", "64", "-epochs", "2", "-log-every", "10"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The reference: a standalone run (spawning its own 4 ranks).
	ref := exec.CommandContext(ctx, mnistBin, append(args, "-np", "4")...)
	ref.Dir = t.TempDir()
	var refOut, refErr bytes.Buffer
	ref.Stdout, ref.Stderr = &refOut, &refErr
	require.NoError(t, ref.Run(), "reference run: %s", refErr.String())
	_, refAcc, refHash := parseOutput(t, refOut.String())
	require.Len(t, refAcc, 2)

	ckdir := t.TempDir()
	job := exec.CommandContext(ctx, ringrun, append([]string{"--max-restarts", "1", "-np", "4", "--", mnistBin}, append(args, "-checkpoint", ckdir)...)...)
	job.Dir = t.TempDir()
	var jobErr bytes.Buffer
	job.Stderr = &jobErr
	stdout, err := job.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, job.Start())

	killLine := fmt.Sprintf("[0] step=%d ", killAt)
	var rank0 []string
	killed := false
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		line := lines.Text()
		if text, ok := strings.CutPrefix(line, "[0] "); ok {
			rank0 = append(rank0, text)
		}
		if !killed && strings.HasPrefix(line, killLine) {
			require.NoError(t, syscall.Kill(rankPID(t, job.Process.Pid, 2), syscall.SIGKILL))
			killed = true
		}
	}
	require.NoError(t, job.Wait(), "ringrun: %s", jobErr.String())
	require.True(t, killed, "never saw step %d", killAt)
	require.Contains(t, jobErr.String(), "restarting the job (restart 1 of 1)")
	require.Regexp(t, regexp.MustCompile(`\[0\] mnist: resumed from .*mnist.ckpt at epoch 1, step 469`), jobErr.String())

	// The restarted job starts at step 470: its lines from there on are
	// the reference's, hash included.
	var restarted []string
	for i, line := range rank0 {
		if strings.HasPrefix(line, "step=470 ") {
			restarted = rank0[i:]
		}
	}
	refLines := strings.Split(strings.TrimSpace(refOut.String()), "\n")
	for i, line := range refLines {
		if strings.HasPrefix(line, "step=470 ") {
			refLines = refLines[i:]
			break
		}
	}
	require.Equal(t, refLines, restarted)
	_, acc, hash := parseOutput(t, strings.Join(restarted, "\n"))
	require.Equal(t, refHash, hash)
	require.Equal(t, refAcc[1:], acc)
}

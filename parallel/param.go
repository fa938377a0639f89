package parallel

// Param is one named parameter tensor of a model, flattened.
type Param struct {
	Name string
	Data []float32 // values
	Grad []float32 // gradient, same length as Data
}

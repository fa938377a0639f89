package ps

// Crash makes the worker fail with cause, as a crashed process would look
// to its servers but for the cause they read: its pairs abort.
func (w *Worker) Crash(cause error) { w.fail(cause) }

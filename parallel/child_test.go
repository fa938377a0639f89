package parallel_test

func runChild() bool { return false }

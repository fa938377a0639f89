package ps_test

func runChild() bool { return false }

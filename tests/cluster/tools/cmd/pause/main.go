// Command pause is the sandbox ("pause") process of the end-to-end tests' real node: it holds a pod's
// namespaces and exits on SIGTERM or SIGINT. Built statically, it is the whole sandbox image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
}

// Command coredns is CoreDNS with only the plugins the end-to-end tests' cluster DNS uses: the kubernetes
// plugin answers Service and pod names (JobSet's headless Service included); there is no forward plugin, so
// no query ever leaves the machine.
package main

import (
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}

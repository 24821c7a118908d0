package kubeapi

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts the server in its own process group (a terminal's
// Ctrl-C reaches only the caller, which stops it in order) and kills it
// when the caller dies.
func setProcAttr(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
}

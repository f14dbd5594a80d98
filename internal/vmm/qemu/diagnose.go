package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Diagnose says what QEMU knows of a guest that does not answer: its run
// state, each virtio queue's ring indices, and the interrupt controller's
// pins and pending vectors. It tells a guest that lost a completion or an
// interrupt (the device used a buffer the driver never saw: used-idx
// past what was signalled, or an IRQ pending and not delivered) from one
// that never asked (avail indices equal, nothing in use) and from a guest
// merely slow. Each part is bounded by ctx (and 5 s); what fails says so
// in place of its part.
func (vm *VM) Diagnose(ctx context.Context) string {
	if vm.qmp == nil {
		return "no QMP connection"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var b strings.Builder
	if run, err := vm.runState(ctx); err != nil {
		fmt.Fprintf(&b, "run state: %v", err)
	} else {
		fmt.Fprintf(&b, "run state %s", run)
	}
	b.WriteString("; virtio: ")
	b.WriteString(vm.virtioQueues(ctx))
	b.WriteString("; ")
	b.WriteString(vm.interrupts(ctx))
	b.WriteString("; vCPU 0: ")
	b.WriteString(vm.cpuState(ctx))
	return b.String()
}

var ripRE = regexp.MustCompile(`\bRIP=([0-9a-f]+)`)

// cpuState is where vCPU 0 is (RIP: a kernel address; nokaslr makes it
// one System.map names) and whether it is halted (HLT=1: the guest idles,
// waiting for an interrupt).
func (vm *VM) cpuState(ctx context.Context) string {
	regs, err := vm.hmp(ctx, "info registers")
	if err != nil {
		return "info registers: " + err.Error()
	}
	var parts []string
	if m := ripRE.FindStringSubmatch(regs); m != nil {
		parts = append(parts, "RIP="+m[1])
	}
	if m := hltRE.FindStringSubmatch(regs); m != nil {
		parts = append(parts, "HLT="+m[1])
	}
	return strings.Join(parts, " ")
}

// virtioQueues lists each virtio device's ISR and, per queue, the indices
// of its rings: avail (the guest's, shadow) / last-avail (taken by QEMU),
// used, in use (taken and not yet used) and the last used index signalled.
func (vm *VM) virtioQueues(ctx context.Context) string {
	raw, err := vm.qmp.Execute(ctx, "x-query-virtio", nil)
	if err != nil {
		return err.Error()
	}
	var devs []struct {
		Name string `json:"name"`
		Path string `json:"path"`
	}
	if err := json.Unmarshal(raw, &devs); err != nil {
		return "x-query-virtio: " + err.Error()
	}
	var parts []string
	for _, d := range devs {
		var st struct {
			ISR    int `json:"isr"`
			NumVQs int `json:"num-vqs"`
		}
		raw, err := vm.qmp.Execute(ctx, "x-query-virtio-status", map[string]any{"path": d.Path})
		if err == nil {
			err = json.Unmarshal(raw, &st)
		}
		if err != nil {
			parts = append(parts, fmt.Sprintf("%s: %v", d.Name, err))
			continue
		}
		p := fmt.Sprintf("%s isr=%d", d.Name, st.ISR)
		for q := range min(st.NumVQs, 8) {
			var qs struct {
				Shadow    int  `json:"shadow-avail-idx"`
				LastAvail int  `json:"last-avail-idx"`
				Used      int  `json:"used-idx"`
				InUse     int  `json:"inuse"`
				Signalled int  `json:"signalled-used"`
				Valid     bool `json:"signalled-used-valid"`
			}
			raw, err := vm.qmp.Execute(ctx, "x-query-virtio-queue-status", map[string]any{"path": d.Path, "queue": q})
			if err == nil {
				err = json.Unmarshal(raw, &qs)
			}
			if err != nil {
				p += fmt.Sprintf(" q%d: %v", q, err)
				continue
			}
			if qs.Shadow == 0 && qs.Used == 0 && qs.InUse == 0 {
				continue // a queue never used says nothing
			}
			p += fmt.Sprintf(" q%d avail=%d/%d used=%d inuse=%d signalled=%d", q, qs.Shadow, qs.LastAvail, qs.Used, qs.InUse, qs.Signalled)
			if !qs.Valid {
				p += "(invalid)"
			}
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// interrupts is the I/O APIC's unmasked pins and pending lines, and the
// local APIC's in-service and requested vectors (HMP: QMP has no query
// for them).
func (vm *VM) interrupts(ctx context.Context) string {
	var out []string
	for _, cmd := range []string{"info pic", "info lapic"} {
		text, err := vm.hmp(ctx, cmd)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", cmd, err))
			continue
		}
		for line := range strings.Lines(text) {
			line = strings.Join(strings.Fields(line), " ")
			switch {
			case strings.HasPrefix(line, "pin ") && !strings.Contains(line, "masked"),
				strings.HasPrefix(line, "IRR"), strings.HasPrefix(line, "ISR"),
				strings.HasPrefix(line, "Remote IRR"), strings.HasPrefix(line, "APR"),
				strings.HasPrefix(line, "Timer"), strings.HasPrefix(line, "LVTT "):
				out = append(out, line)
			}
		}
	}
	return strings.Join(out, " | ")
}

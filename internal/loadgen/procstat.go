package loadgen

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times; 100 on every
// Linux architecture Go supports in practice.
const clockTick = 10 * time.Millisecond

// CPUTime returns the user+system CPU time the process has used so far,
// from /proc/<pid>/stat.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields resume after ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// After ')': state is field 3, so utime (14) and stime (15) are at
	// indexes 11 and 12.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// PeakRSS returns the process' peak resident set size (VmHWM) in bytes.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
}

// ProcUsage is the resource use of a process (or a group of processes)
// over the measured part of a run.
type ProcUsage struct {
	PIDs []int `json:"pids"`
	// CPU is user+system time used during the measured window.
	CPU Millis `json:"cpu_ms"`
	// CPUPerRequest is CPU divided by the requests answered.
	CPUPerRequest Millis `json:"cpu_per_request_ms"`
	// CPUShare is CPU over wall-clock time (1.0 = one core busy).
	CPUShare float64 `json:"cpu_cores"`
	// PeakRSS is the largest VmHWM of the processes, in bytes.
	PeakRSS int64 `json:"peak_rss_bytes"`
}

func (u *ProcUsage) String() string {
	return fmt.Sprintf("CPU %s per request (%.2f cores busy), peak RSS %.1f MiB",
		fmtUs(time.Duration(u.CPUPerRequest)), u.CPUShare, float64(u.PeakRSS)/(1<<20))
}

func fmtUs(d time.Duration) string {
	return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
}

// ProcMeter measures CPU between Start and Stop for a set of processes.
type ProcMeter struct {
	pids  []int
	cpu0  time.Duration
	wall0 time.Time
}

// NewProcMeter measures the given processes.
func NewProcMeter(pids ...int) *ProcMeter { return &ProcMeter{pids: pids} }

func (m *ProcMeter) cpu() time.Duration {
	var sum time.Duration
	for _, p := range m.pids {
		if c, err := CPUTime(p); err == nil {
			sum += c
		}
	}
	return sum
}

// Start takes the first reading.
func (m *ProcMeter) Start() {
	m.cpu0 = m.cpu()
	m.wall0 = time.Now()
}

// Stop takes the second reading and returns the usage over requests.
func (m *ProcMeter) Stop(requests int64) *ProcUsage {
	cpu := m.cpu() - m.cpu0
	wall := time.Since(m.wall0)
	u := &ProcUsage{PIDs: m.pids, CPU: Millis(cpu)}
	if requests > 0 {
		u.CPUPerRequest = Millis(cpu / time.Duration(requests))
	}
	if wall > 0 {
		u.CPUShare = cpu.Seconds() / wall.Seconds()
	}
	for _, p := range m.pids {
		if r, err := PeakRSS(p); err == nil && r > u.PeakRSS {
			u.PeakRSS = r
		}
	}
	return u
}

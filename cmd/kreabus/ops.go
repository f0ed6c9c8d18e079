package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/natsconn"
	"github.com/kreabus/kreabus/pkg/events"
)

// opsSettings are what the operator subcommands read: the usual NATS
// connection settings (NATS_URL, NATS_CREDS, ... and their flags) and how
// long to wait for the answer.
type opsSettings struct {
	natsconn.Config
	Timeout time.Duration `flag:"timeout" usage:"how long to wait for the kreabus service's answer"`
}

// defaultOpsTimeout is --timeout's default.
const defaultOpsTimeout = 10 * time.Second

// SetDefaults gives new settings their defaults.
func (s *opsSettings) SetDefaults() {
	s.Config.SetDefaults()
	if s.Timeout == 0 {
		s.Timeout = defaultOpsTimeout
	}
}

const opsUsage = `usage:
  kreabus status <request_id>          what kreabus knows about a request
  kreabus job <job_id>                 a job as Krea reports it now
  kreabus cancel <job_id|request_id>   cancel a job, or a request not sent yet
flags (before or after the ID): --nats-url (NATS_URL), --nats-creds (NATS_CREDS),
  --nats-nkey (NATS_NKEY), --nats-ca, --nats-cert, --nats-key, --timeout (10s)
`

// runOps runs an operator subcommand against the kreabus NATS service and
// prints its JSON answer. Exit codes: 0 answered, 1 the service answered
// an error or could not be reached, 2 bad usage.
func runOps(ctx context.Context, cmd string, args []string, env func(string) (string, bool), stdout, stderr io.Writer) int {
	id, rest := splitID(args)
	if id == "" {
		fmt.Fprintf(stderr, "kreabus %s: missing ID\n%s", cmd, opsUsage)
		return 2
	}
	var s opsSettings
	if err := config.Load(&s, "kreabus "+cmd, rest, env); err != nil {
		fmt.Fprintf(stderr, "kreabus %s: %v\n%s", cmd, err, opsUsage)
		return 2
	}
	if s.Timeout <= 0 {
		fmt.Fprintf(stderr, "kreabus %s: --timeout must be positive\n", cmd)
		return 2
	}
	nc, err := natsconn.Connect(s.Config, "kreabus-cli", slog.New(slog.DiscardHandler), nil)
	if err != nil {
		fmt.Fprintf(stderr, "kreabus %s: %v\n", cmd, err)
		return 1
	}
	defer nc.Close()
	svc, err := events.NewService(nc)
	if err != nil {
		fmt.Fprintf(stderr, "kreabus %s: %v\n", cmd, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	var out any
	switch cmd {
	case "status":
		out, err = svc.RequestStatus(ctx, id)
	case "job":
		out, err = svc.Job(ctx, id)
	case "cancel":
		out, err = cancelEither(ctx, svc, id)
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && !nc.IsConnected() {
			err = fmt.Errorf("cannot reach NATS at %s", nc.Opts.Url)
		}
		fmt.Fprintf(stderr, "kreabus %s %s: %v\n", cmd, id, err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
	return 0
}

// cancelEither cancels id as a request when kreabus knows a request by
// that ID, else as a job: the two kinds of ID can look alike.
func cancelEither(ctx context.Context, svc *events.Service, id string) (*events.CancelResult, error) {
	_, err := svc.RequestStatus(ctx, id)
	switch {
	case err == nil:
		return svc.Cancel(ctx, events.CancelRequest{RequestID: id})
	case errors.Is(err, events.ErrServiceNotFound) || errors.Is(err, &events.ServiceError{Code: events.CodeBadRequest}):
		return svc.Cancel(ctx, events.CancelRequest{JobID: id})
	}
	return nil, err
}

// splitID takes the one argument that is not a flag: the first when it
// does not start with "-", else the last.
func splitID(args []string) (string, []string) {
	if len(args) == 0 {
		return "", nil
	}
	if !strings.HasPrefix(args[0], "-") {
		return args[0], args[1:]
	}
	last := args[len(args)-1]
	if strings.HasPrefix(last, "-") {
		return "", args
	}
	return last, args[:len(args)-1]
}

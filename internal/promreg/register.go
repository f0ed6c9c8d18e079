// Package promreg holds what kreabus' packages share to expose Prometheus
// metrics, apart from the HTTP admin server that serves them.
package promreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c on reg and returns it, or the identical collector
// already registered there (a part restarted in the same process, or a
// second replica in a test), so counts go on in one series. A nil reg
// registers nothing. A different collector under the same name is an
// error.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

package bridged

// The bridge answer as the program's tests read it; the checks are
// bridgetest's, shared with package bridge's tests.

import (
	"net/http"
	"testing"

	"github.com/kreabus/kreabus/internal/bridge/bridgetest"
)

const testSecret = "test-current-secret-0123456789abcdef"

// response is an answer of the bridge, read whole.
type response struct {
	code   int
	header http.Header
	body   []byte
}

// okAnswer is the 200 body.
type okAnswer = bridgetest.OKAnswer

func (r response) errMsg(t testing.TB) string {
	t.Helper()
	return bridgetest.ErrMsg(t, r.body)
}

func (r response) ok(t testing.TB) okAnswer {
	t.Helper()
	return bridgetest.OK(t, r.code, r.body)
}

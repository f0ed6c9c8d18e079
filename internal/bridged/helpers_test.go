package bridged

// The bridge answer as the program's tests read it; the checks are
// bridgetest's, shared with package bridge's tests.

import (
	"github.com/kreabus/kreabus/internal/bridge/bridgetest"
)

const testSecret = "test-current-secret-0123456789abcdef"

// response is an answer of the bridge, read whole.
type response = bridgetest.Response

// okAnswer is the 200 body.
type okAnswer = bridgetest.OKAnswer

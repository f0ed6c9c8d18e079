#!/usr/bin/env bash
# Installs the nats CLI (natscli) at the version the README's recipe is
# tested with, into $(go env GOPATH)/bin, unless that version is already
# there. Used by .ci/run; run it by hand to follow the README's recipe.
set -euo pipefail
version=v0.5.0
bin="$(go env GOPATH)/bin"
if [ -x "$bin/nats" ] && "$bin/nats" --version 2>&1 | grep -qx "$version"; then
	exit 0
fi
go install "github.com/nats-io/natscli/nats@${version}"
"$bin/nats" --version >/dev/null

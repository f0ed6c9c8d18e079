#!/usr/bin/env bash
# Installs promtool (Debian/Ubuntu package prometheus), which the test of
# k8s/monitoring/prometheusrule.yaml runs when it is on PATH.
set -euo pipefail
if command -v promtool >/dev/null; then
	promtool --version
	exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus
promtool --version

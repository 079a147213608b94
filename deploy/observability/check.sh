#!/usr/bin/env bash
# Checks the Prometheus rules and runs their unit tests with promtool. promtool comes from
# Debian's `prometheus` package (bookworm: 2.42), installed here when missing (CI runs as root);
# the package's daemon is stopped again if installing started one.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "promtool missing: run as root to install Debian's prometheus package" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null
    # No systemd here means no daemon; where there is one, stop and disable it.
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl disable --now prometheus
    fi
fi
promtool check config prometheus.yml
promtool check rules alerts.yaml
promtool test rules alerts.test.yaml

#!/usr/bin/env bash
# Stops what an interrupted `make e2e-node` left running (its test process killed before it could
# clean up): the real node's kubelet, kube-proxy, containerd, its containers' shims and processes,
# the control plane it started (NATS and CoreDNS ran in its pods), their mounts, kube-proxy's
# iptables rules and the bridge. Only processes of those runs (their paths under /tmp/aether-node-*
# or the bridge address). net.ipv4.ip_forward, which the node set to 1 and restores when it stops
# normally, stays 1 after an interrupted run: set it back by hand if the machine needs it off.
set -u
pids=$(pgrep -f '/tmp/aether-node-|--bind-address 10\.88\.0\.1|nats-server -a 10\.88\.0\.1' || true)
for p in $pids; do
  # The control plane's etcd, controller manager and scheduler are named by its temp directory.
  dir=$( (tr "\0" " " < /proc/$p/cmdline) 2>/dev/null | grep -o -- "--cert-dir [^ ]*" | awk "{print \$2}" | xargs -r dirname)
  [ -n "${dir:-}" ] && pids="$pids $(pgrep -f "$dir" || true)"
done
for p in $pids; do
  # The shims' children (containers) first, then the rest.
  pkill -KILL -P "$p" 2>/dev/null
  kill -KILL "$p" 2>/dev/null
done
pkill -KILL -f 'containerd-shim-runc-v2 .*-address /tmp/aether-node-' 2>/dev/null
for m in $(awk '{print $2}' /proc/mounts | grep -E '^/tmp/aether-node-' | sort -r); do umount -l "$m"; done
for kp in "${TOOLS_DIR:-$HOME/.cache/aether/tools}"/kubernetes-*/kube-proxy; do [ -x "$kp" ] && "$kp" --cleanup >/dev/null 2>&1; done
ip link del aether0 2>/dev/null
exit 0

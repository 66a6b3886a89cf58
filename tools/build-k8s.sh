#!/usr/bin/env bash
# Builds the Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler), kubectl and etcd
# from the Go module proxy into $TOOLS_DIR/<name>-<version>/, once per version; `node` builds a real node's
# kubelet and kube-proxy (the control plane's version) into $TOOLS_DIR/kubernetes-<version>/ beside them.
#
# `go install k8s.io/kubernetes/cmd/...@v` cannot work: k8s.io/kubernetes's go.mod replaces every
# staging module (k8s.io/api, k8s.io/apiserver, ...) with ./staging. So a wrapper module requires
# k8s.io/kubernetes and pins each module that go.mod requires at v0.0.0 to its published v0.<minor>.<patch>.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
TOOLS_DIR=${TOOLS_DIR:-$HOME/.cache/aether/tools}
WORK=${WORK:-$HOME/.cache/aether/src}
staging=v0.${K8S_VERSION#v1.}

# $1: the commands to build (k8s.io/kubernetes/cmd/<name>).
build_k8s() {
  local out="$TOOLS_DIR/kubernetes-$K8S_VERSION" missing=0
  for cmd in "$@"; do [ -x "$out/$cmd" ] || missing=1; done
  [ "$missing" = 1 ] || return 0
  local dir="$WORK/kubernetes-$K8S_VERSION"
  mkdir -p "$dir" "$out"
  cd "$dir"
  [ -f go.mod ] || go mod init aether.local/k8s-tools >/dev/null 2>&1
  local modfile
  modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
  # Every k8s.io module k8s.io/kubernetes requires at v0.0.0 is a staging module: pin it.
  grep -E '^\s+k8s\.io/[^ ]+ v0\.0\.0\s*$' "$modfile" | awk '{print $1}' | sort -u | while read -r m; do
    go mod edit -replace="$m=$m@$staging"
  done
  printf 'package tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\t_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"\n\t_ "k8s.io/kubernetes/cmd/kube-scheduler/app"\n\t_ "k8s.io/kubernetes/cmd/kubelet/app"\n\t_ "k8s.io/kubernetes/cmd/kube-proxy/app"\n\t_ "k8s.io/kubectl/pkg/cmd"\n)\n' > tools.go
  GOFLAGS=-mod=mod go mod tidy >/dev/null
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#v1.}"
  for cmd in "$@"; do
    [ -x "$out/$cmd" ] || go build -trimpath -ldflags "$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
}

build_etcd() {
  local out="$TOOLS_DIR/etcd-$ETCD_VERSION"
  [ -x "$out/etcd" ] && return
  local dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir" "$out"
  cd "$dir"
  [ -f go.mod ] || go mod init aether.local/etcd-tools >/dev/null 2>&1
  printf 'package tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  GOFLAGS=-mod=mod go mod tidy >/dev/null
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
}

case "${1:-all}" in
  etcd) build_etcd ;;
  k8s) build_k8s kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
  node) build_k8s kubelet kube-proxy ;;
  all) build_etcd; build_k8s kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
esac

#!/usr/bin/env bash
# Builds Dapr's daprd and placement (the peer `make bench-peers` compares with) from the Go module
# proxy into $TOOLS_DIR/dapr-<version>/, once per version.
#
# `go install github.com/dapr/dapr/cmd/daprd@v` cannot work: dapr's go.mod has `replace` directives,
# which the go command ignores in a dependency. So a wrapper module requires github.com/dapr/dapr and
# copies them. daprd needs the build tag `stablecomponents` (without it, it panics at start: its
# components are registered only under that tag or `allcomponents`).
set -euo pipefail
DAPR_VERSION=${DAPR_VERSION:-v1.14.0}
TOOLS_DIR=${TOOLS_DIR:-$HOME/.cache/aether/tools}
WORK=${WORK:-$HOME/.cache/aether/src}
out="$TOOLS_DIR/dapr-$DAPR_VERSION"
if [ -x "$out/daprd" ] && [ -x "$out/placement" ]; then
  exit 0
fi
dir="$WORK/dapr-$DAPR_VERSION"
mkdir -p "$dir" "$out"
cd "$dir"
cat > go.mod <<GOMOD
module aether.local/dapr-tools

go 1.22.6

require github.com/dapr/dapr $DAPR_VERSION

// Copied from github.com/dapr/dapr's go.mod at $DAPR_VERSION.
replace (
	dubbo.apache.org/dubbo-go/v3 => dubbo.apache.org/dubbo-go/v3 v3.0.3-0.20230118042253-4f159a2b38f3
	gopkg.in/couchbaselabs/gocbconnstr.v1 => github.com/couchbaselabs/gocbconnstr v1.0.5
)

replace (
	github.com/chenzhuoyu/iasm => github.com/chenzhuoyu/iasm v0.9.0
	github.com/chzyer/logex => github.com/chzyer/logex v1.2.1
	github.com/gobwas/pool => github.com/gobwas/pool v0.2.1
	github.com/toolkits/concurrent => github.com/niean/gotools v0.0.0-20151221085310-ff3f51fc5c60
)

replace github.com/microcosm-cc/bluemonday => github.com/microcosm-cc/bluemonday v1.0.24

replace github.com/stretchr/testify => github.com/stretchr/testify v1.8.4
GOMOD
printf 'package tools\n\nimport (\n\t_ "github.com/dapr/dapr/cmd/daprd/app"\n)\n' > tools.go
ldflags="-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=${DAPR_VERSION#v} -X github.com/dapr/kit/logger.DaprVersion=${DAPR_VERSION#v}"
for cmd in daprd placement; do
  [ -x "$out/$cmd" ] || CGO_ENABLED=0 GOFLAGS=-mod=mod go build -tags stablecomponents -trimpath \
    -ldflags "$ldflags" -o "$out/$cmd" "github.com/dapr/dapr/cmd/$cmd"
done

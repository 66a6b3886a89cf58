# aether: the commands a developer and CI run. `make test` runs every test of the project.
SHELL := /bin/bash
CARGO ?= cargo
# Tools built from Go modules live outside the checkout, keyed by version, so fresh clones reuse them.
TOOLS_DIR ?= $(HOME)/.cache/aether/tools
NATS_SERVER_VERSION := v2.15.2
NATS_SERVER := $(TOOLS_DIR)/nats-server-$(NATS_SERVER_VERSION)/nats-server
HELM_VERSION := v3.22.0
# The Kubernetes minor the Rust types (k8s-openapi v1_36) and tools/build-k8s.sh use.
K8S_VERSION := v1.36.3
ETCD_VERSION := v3.6.16
KUBE_APISERVER := $(TOOLS_DIR)/kubernetes-$(K8S_VERSION)/kube-apiserver
KUBECTL := $(TOOLS_DIR)/kubernetes-$(K8S_VERSION)/kubectl
ETCD := $(TOOLS_DIR)/etcd-$(ETCD_VERSION)/etcd
HELM := $(TOOLS_DIR)/helm-$(HELM_VERSION)/helm

.PHONY: all build test sdk-test lint fmt generate check-generated chart-check bench bench-scale bench-peers tools-peers chaos soak fuzz model-check demo demo-node tools clean-tools images node-images node-tools e2e-node observability

all: lint test

build:
	$(CARGO) build --workspace --all-targets

## test: every test (unit, property, NATS, end-to-end); the tools they need are built first.
# The end-to-end tests start the workspace's binaries as OS processes, so those are built first.
# Property tests run a fixed-seed slice here (PROPTEST_RNG_SEED); set it to another value to explore.
PROPTEST_RNG_SEED ?= 20261202
test: tools check-generated chart-check sdk-test
	$(CARGO) build --workspace --release --bins
	PROPTEST_RNG_SEED=$(PROPTEST_RNG_SEED) AETHER_TOOLS_DIR=$(TOOLS_DIR) AETHER_NATS_SERVER=$(NATS_SERVER) AETHER_ETCD=$(ETCD) AETHER_KUBE_APISERVER=$(KUBE_APISERVER) \
	  $(CARGO) test --workspace --release --no-fail-fast

## sdk-test: the Python and TypeScript SDKs' own tests (kinds, the app protocol over HTTP, the bank in
## memory); their clients against a real sidecar run in `make test` (tests/tests/it/app_protocol.rs).
## scripts/check-ts.sh first proves the committed JavaScript (sdk/typescript/dist, examples/bank-ts/app.js)
## is what tsc makes of the TypeScript sources.
sdk-test:
	python3 -m unittest discover -s sdk/python/tests
	bash scripts/check-ts.sh
	node --test sdk/typescript/test/

## demo: a local control plane, NATS and pods as processes; helm install, kubectl apply, a workload,
## kubectl scale 3 -> 5 -> 2 while `kubectl get shardplans -w` shows the plan. Ctrl-C tears down.
demo: tools
	$(CARGO) build --release --bins --example demo -p aether-tests -p aether-node -p aether-operator
	AETHER_TOOLS_DIR=$(TOOLS_DIR) AETHER_NATS_SERVER=$(NATS_SERVER) $${CARGO_TARGET_DIR:-target}/release/examples/demo

## demo-node: `make demo` on a real node (root): containerd, runc, a kubelet, kube-proxy and
## CoreDNS run the images of `make images`, NATS in a pod (as `make e2e-node`). Ctrl-C tears down.
demo-node: node-tools node-images
	tools/node/clean.sh
	$(CARGO) build --release --example demo -p aether-tests
	AETHER_TOOLS_DIR=$(TOOLS_DIR) AETHER_NATS_SERVER=$(NATS_SERVER) AETHER_ETCD=$(ETCD) AETHER_KUBE_APISERVER=$(KUBE_APISERVER) \
	  $${CARGO_TARGET_DIR:-target}/release/examples/demo --real-node; status=$$?; tools/node/clean.sh; exit $$status

## images: OCI image archives of aether-node, aether-operator and the bank example under
## target/images/, without a container engine: each Dockerfile's last stage on a base of Debian
## packages (scripts/oci-image.py), then checked against its Dockerfile (scripts/check-images.py).
## Load one with `ctr -n k8s.io images import`, `kind load image-archive` or `skopeo copy oci-archive:`.
APP_VERSION := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/aether/Chart.yaml)
IMAGE_REPO ?= ghcr.io/aether-dev
IMAGES_DIR := $${CARGO_TARGET_DIR:-target}/images
images:
	$(CARGO) build --release --bins -p aether-node -p aether-operator
	mkdir -p $(IMAGES_DIR)
	python3 scripts/oci-image.py docker/node.Dockerfile $(IMAGE_REPO)/aether-node:$(APP_VERSION) $(IMAGES_DIR)/aether-node.tar --base rust
	python3 scripts/oci-image.py docker/operator.Dockerfile $(IMAGE_REPO)/aether-operator:$(APP_VERSION) $(IMAGES_DIR)/aether-operator.tar --base rust
	python3 scripts/oci-image.py docker/bank-example.Dockerfile $(IMAGE_REPO)/aether-bank-example:$(APP_VERSION) $(IMAGES_DIR)/aether-bank-example.tar --base python
	python3 scripts/check-images.py docker/node.Dockerfile=$(IMAGES_DIR)/aether-node.tar docker/operator.Dockerfile=$(IMAGES_DIR)/aether-operator.tar docker/bank-example.Dockerfile=$(IMAGES_DIR)/aether-bank-example.tar

## node-tools: what a real node needs (`make e2e-node`): Debian's containerd, runc, CNI plugins,
## iptables, conntrack and skopeo (apt-get, when missing), the kubelet and kube-proxy of the
## control plane's version (tools/build-k8s.sh node: ~5 min once the control plane is built) and
## CoreDNS (static, from its Go module).
KUBELET := $(TOOLS_DIR)/kubernetes-$(K8S_VERSION)/kubelet
COREDNS_VERSION := v1.15.0
COREDNS := $(TOOLS_DIR)/coredns-$(COREDNS_VERSION)/coredns
$(COREDNS):
	mkdir -p $(dir $@)
	CGO_ENABLED=0 GOBIN=$(dir $@) go install -ldflags "-s -w" github.com/coredns/coredns@$(COREDNS_VERSION)
node-tools: tools $(KUBELET) $(COREDNS)
	@command -v containerd >/dev/null && command -v runc >/dev/null && test -x /usr/lib/cni/bridge \
	  && command -v iptables >/dev/null && command -v conntrack >/dev/null && command -v skopeo >/dev/null \
	  || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q containerd runc \
	      containernetworking-plugins iptables conntrack skopeo)

$(KUBELET):
	TOOLS_DIR=$(TOOLS_DIR) K8S_VERSION=$(K8S_VERSION) tools/build-k8s.sh node

## node-images: `make images`, and the images only the real node needs: its pause image
## (tools/node/pause.c), NATS and CoreDNS (the tools' binaries).
node-images: images $(NATS_SERVER) $(COREDNS)
	mkdir -p $${CARGO_TARGET_DIR:-target}/pause $${CARGO_TARGET_DIR:-target}/node
	gcc -static -O2 -o $${CARGO_TARGET_DIR:-target}/pause/pause tools/node/pause.c
	cp $(NATS_SERVER) $(COREDNS) $${CARGO_TARGET_DIR:-target}/node/
	python3 scripts/oci-image.py tools/node/pause.Dockerfile registry.k8s.io/pause:3.10 $(IMAGES_DIR)/pause.tar --base none
	python3 scripts/oci-image.py tools/node/nats.Dockerfile aether.local/nats-server:e2e $(IMAGES_DIR)/nats-server.tar --base rust
	python3 scripts/oci-image.py tools/node/coredns.Dockerfile aether.local/coredns:e2e $(IMAGES_DIR)/coredns.tar --base none

## e2e-node: the chart on a real node (root): containerd, runc and a kubelet run the images of
## `make images`, NATS and CoreDNS in pods of their own (tests/tests/e2e_node.rs). Not part of
## `make test`.
e2e-node: node-tools node-images
	tools/node/clean.sh
	skopeo inspect oci-archive:$(IMAGES_DIR)/aether-node.tar >/dev/null
	PROPTEST_RNG_SEED=$(PROPTEST_RNG_SEED) AETHER_TOOLS_DIR=$(TOOLS_DIR) AETHER_NATS_SERVER=$(NATS_SERVER) AETHER_ETCD=$(ETCD) AETHER_KUBE_APISERVER=$(KUBE_APISERVER) \
	  $(CARGO) test --release -p aether-tests --features real-node --test e2e_node -- --nocapture --test-threads=1; \
	  status=$$?; tools/node/clean.sh; exit $$status

## observability: the chart's dashboard and alerts proven on real data: `promtool check rules` and
## `promtool test rules` (each alert fires and resolves), then the end-to-end stack with a real
## Prometheus configured from the chart's PodMonitors and PrometheusRule (tests/tests/observability.rs).
## Then traces (tests/tests/traces.rs): node processes exporting to a real Jaeger v2. Prometheus,
## promtool and Jaeger build from their Go modules (~6 and ~5 min once); the Prometheus Operator's
## CRDs come from its module. Not part of `make test`.
PROMETHEUS_VERSION := v0.316.0
PROMETHEUS_OPERATOR_VERSION := v0.85.0
PROMETHEUS := $(TOOLS_DIR)/prometheus-$(PROMETHEUS_VERSION)/prometheus
PROMTOOL := $(TOOLS_DIR)/prometheus-$(PROMETHEUS_VERSION)/promtool
PROMETHEUS_CRDS := $(TOOLS_DIR)/prometheus-operator-$(PROMETHEUS_OPERATOR_VERSION)/crds.yaml
JAEGER_VERSION := v1.75.0
JAEGER := $(TOOLS_DIR)/jaeger-$(JAEGER_VERSION)/jaeger
$(JAEGER):
	mkdir -p $(dir $@)
	dir=$$(mktemp -d) && cd $$dir && go mod init jaeger-build >/dev/null 2>&1 && \
	  go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@$(JAEGER_VERSION) && GOBIN=$(abspath $(dir $@)) go install tool
$(PROMETHEUS):
	mkdir -p $(dir $@)
	GOBIN=$(abspath $(dir $@)) go install github.com/prometheus/prometheus/cmd/prometheus@$(PROMETHEUS_VERSION) github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_VERSION)
$(PROMETHEUS_CRDS):
	mkdir -p $(dir $@)
	dir=$$(cd $$(mktemp -d) && go mod init crds >/dev/null 2>&1 && go mod download -json github.com/prometheus-operator/prometheus-operator@$(PROMETHEUS_OPERATOR_VERSION) | sed -n 's/.*"Dir": "\(.*\)".*/\1/p') && \
	  cat $$dir/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml > $@.tmp && echo --- >> $@.tmp && \
	  cat $$dir/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml >> $@.tmp && mv $@.tmp $@
observability: tools $(PROMETHEUS) $(PROMETHEUS_CRDS) $(JAEGER)
	$(PROMTOOL) check rules charts/aether/files/alerts.yaml
	$(PROMTOOL) test rules tests/observability/alerts.test.yaml
	$(CARGO) build --workspace --release --bins
	AETHER_TOOLS_DIR=$(TOOLS_DIR) AETHER_NATS_SERVER=$(NATS_SERVER) AETHER_ETCD=$(ETCD) AETHER_KUBE_APISERVER=$(KUBE_APISERVER) \
	  AETHER_PROMETHEUS=$(PROMETHEUS) AETHER_PROMETHEUS_OPERATOR_CRDS=$(PROMETHEUS_CRDS) AETHER_JAEGER=$(JAEGER) \
	  $(CARGO) test --release -p aether-tests --features observability --test observability --test traces -- --nocapture

## lint: formatting and clippy, warnings are errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p aether-tests --features real-node --test e2e_node -- -D warnings
	$(CARGO) clippy -p aether-tests --features observability --test observability --test traces -- -D warnings

fmt:
	$(CARGO) fmt --all

## generate: regenerate checked-in files from code (the CRD).
generate:
	$(CARGO) run -q --release -p aether-operator --bin crdgen > crds/shardplan.yaml
	cp crds/shardplan.yaml charts/aether/crds/shardplan.yaml

## check-generated: fail when a generated file differs from the code.
check-generated: generate
	@git diff --exit-code -- crds/ charts/aether/crds/ || { echo "generated files are stale: run 'make generate' and commit"; exit 1; }

## chart-check: helm lint, a render of every template with the example on, and its pods' security
## context (scripts/chart-security.py: numeric non-root users, seccomp, no privilege, read-only root, resources).
chart-check: $(HELM)
	$(HELM) lint charts/aether --kube-version $(K8S_VERSION) --set example.enabled=true
	mkdir -p target
	$(HELM) template t charts/aether --kube-version $(K8S_VERSION) --set example.enabled=true --set networkPolicy.enabled=true > target/chart-render.yaml
	python3 scripts/chart-security.py < target/chart-render.yaml
	@for kind in Deployment ClusterRole Role StatefulSet PodDisruptionBudget ShardPlan NetworkPolicy; do \
	  grep -q "^kind: $$kind$$" target/chart-render.yaml || { echo "chart render lacks a $$kind"; exit 1; }; done
	$(HELM) template t charts/aether --kube-version $(K8S_VERSION) --set example.enabled=true --set monitoring.dashboards.enabled=true --set monitoring.prometheusRule.enabled=true --set monitoring.podMonitor.enabled=true > target/chart-monitoring.yaml
	@for kind in ConfigMap PrometheusRule PodMonitor; do \
	  grep -q "^kind: $$kind$$" target/chart-monitoring.yaml || { echo "chart render with monitoring lacks a $$kind"; exit 1; }; done
	python3 -c 'import json,sys; d=json.load(open("charts/aether/files/dashboard.json")); assert all(t["expr"] for p in d["panels"] for t in p.get("targets",[]))'
	@! $(HELM) template t charts/aether --kube-version $(K8S_VERSION) --set nats.url=bogus > /dev/null 2>&1 || { echo "values.schema.json accepted a bad nats.url"; exit 1; }
	@! $(HELM) template t charts/aether --kube-version $(K8S_VERSION) --set example.enabled=true --set nats.credentialsSecret=s > /dev/null 2>&1 || { echo "the chart gave the operator the sidecars' Secret"; exit 1; }

## chaos: the long chaos runs (>= 100 faults, >= 100,000 operations each, one nats-server then a
## 3-server cluster), then one where the operator process plans and its leader is among the 40
## faults; their histories checked; writes RELIABILITY.md. AETHER_CHAOS_SEEDS=a,b and
## AETHER_CHAOS_OPERATOR_SEED=c replay.
chaos: tools
	$(CARGO) build --release --bins -p aether-node -p aether-operator
	$(CARGO) build --release --example chaos -p aether-tests
	AETHER_TOOLS_DIR=$(TOOLS_DIR) AETHER_NATS_SERVER=$(NATS_SERVER) AETHER_ETCD=$(ETCD) AETHER_KUBE_APISERVER=$(KUBE_APISERVER) \
	  $${CARGO_TARGET_DIR:-target}/release/examples/chaos

## soak: the bank on 4 node processes for an hour (AETHER_SOAK_MINUTES), a plan change every minute;
## memory, descriptors and p99 each minute, every account exact at the end: RELIABILITY.md "Soak".
soak: tools
	$(CARGO) build --release --bins -p aether-node
	$(CARGO) build --release --example soak -p aether-tests
	AETHER_TOOLS_DIR=$(TOOLS_DIR) AETHER_NATS_SERVER=$(NATS_SERVER) $${CARGO_TARGET_DIR:-target}/release/examples/soak

## fuzz: every decoder of network input, 800,000 mutated inputs each (14 decoders: >= 10 million
## executions); `make test` runs 2,000 each. Corpus: core/tests/corpus/.
fuzz:
	AETHER_FUZZ_CASES=800000 PROPTEST_RNG_SEED=$(PROPTEST_RNG_SEED) $(CARGO) test --release -p aether-core --test fuzz_decoders -- --nocapture --test-threads 2

## model-check: the protocol model with one of each fault (`make test` runs a smaller budget).
model-check:
	AETHER_MODEL_BUDGET=faults $(CARGO) test --release -p aether-node --test model_check -- --nocapture

## bench: every benchmark; writes BENCHMARKS.md.
# Criterion writes under the cargo target directory (CARGO_TARGET_DIR when set); the rest under target/.
# The node's binary first: benches start node processes (a fresh clone has none).
bench: tools
	mkdir -p target
	$(CARGO) build --release --bins -p aether-node
	$(CARGO) bench -p aether-core --bench placement
	$(CARGO) run -q --release -p aether-core --example balance_report > target/balance.md
	$(CARGO) bench -p aether-node --bench routing
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench nats
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench app
	python3 scripts/bench-report.py $${CARGO_TARGET_DIR:-target}/criterion target/balance.md BENCHMARKS.md target/nats-bench.json target/app-bench.json
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench recovery
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench timers
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench timer_scale
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench hot
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench tracing

## bench-scale: how cost grows (memory per live and passivated actor at 10,000 to 1,000,000
## actors; a node joining 3 and one lost, 1,000,000 counters; the event stream's size per actor; 3, 10 and 30
## members at 65,536 shards; kubectl aether's where, get and actors at 1,000,000 actors); writes the
## sections "How cost grows", "Node loss", "Stream size per actor", "Members at 65,536 shards" and
## "kubectl aether at scale" of BENCHMARKS.md. Its own target: 24 minutes on a fresh clone (its build
## included), 18 once built.
bench-scale: tools
	$(CARGO) build --release --bins -p aether-node
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench scale
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench node_loss
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench stream_size
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench members
	AETHER_NATS_SERVER=$(NATS_SERVER) $(CARGO) bench -p aether-tests --bench inspect

## bench-peers: aether beside Dapr v1.14.0 actors (placement, daprd per pod, Redis), the same workload
## in one run; writes the Peers section of BENCHMARKS.md. Not part of `make test`.
DAPR_VERSION := v1.14.0
DAPRD := $(TOOLS_DIR)/dapr-$(DAPR_VERSION)/daprd
bench-peers: tools tools-peers
	$(CARGO) build --release --bins -p aether-node
	$(CARGO) build --release --example peers -p aether-tests
	AETHER_TOOLS_DIR=$(TOOLS_DIR) AETHER_NATS_SERVER=$(NATS_SERVER) $${CARGO_TARGET_DIR:-target}/release/examples/peers

## tools-peers: daprd and placement (from the Go module, ~10 min on 2 cores the first time) and
## redis-server (Debian package).
tools-peers: $(DAPRD)
	@command -v redis-server >/dev/null || apt-get install -y --no-install-recommends redis-server >/dev/null || { echo "redis-server is missing and could not be installed"; exit 1; }

$(DAPRD):
	TOOLS_DIR=$(TOOLS_DIR) DAPR_VERSION=$(DAPR_VERSION) tools/build-dapr.sh

## tools: the test binaries, built from Go modules into $(TOOLS_DIR) (first time: ~25 min on 2 cores,
## most of it the Kubernetes control plane; then reused).
tools: $(NATS_SERVER) $(HELM) $(ETCD) $(KUBE_APISERVER) $(KUBECTL)

$(ETCD):
	TOOLS_DIR=$(TOOLS_DIR) ETCD_VERSION=$(ETCD_VERSION) tools/build-k8s.sh etcd

$(KUBE_APISERVER) $(KUBECTL):
	TOOLS_DIR=$(TOOLS_DIR) K8S_VERSION=$(K8S_VERSION) tools/build-k8s.sh k8s

$(NATS_SERVER):
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) go install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION)

$(HELM):
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

clean-tools:
	rm -rf $(TOOLS_DIR)

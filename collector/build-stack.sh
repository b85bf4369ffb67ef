#!/usr/bin/env bash
# Build the stack's real consumers on the host, from the Go module proxy (no Docker, no registry):
#   - otelcol-stageflow: the OpenTelemetry Collector built by the Collector Builder from
#     collector/builder-config.yaml (exactly the components collector/otelcol.yaml uses);
#   - jaeger: Jaeger v2 (module version v1.76.0 = Jaeger release v2.13.0, one commit tagged twice);
#   - prometheus and promtool: Prometheus 3.14.0 (module version v0.314.0).
# Each release's own go.mod and go.sum are used, as its maintainers build it. Binaries are cached by
# version under ${STAGEFLOW_STACK_CACHE:-~/.cache/stageflow-stack}: a warm cache builds nothing.
#
# Usage: collector/build-stack.sh [NAME...]  build what is missing (of collector, jaeger, prometheus;
#                                            all by default), then print the versions and NAME=PATH lines
#        collector/build-stack.sh --print   only print those lines (the paths may not exist yet)
# Needs Go (1.25.8 or newer) and the module proxy; a cold build takes minutes on two cores.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
manifest="$here/builder-config.yaml"
cache=${STAGEFLOW_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stageflow-stack}

collector_version=$(sed -n 's/^  version: *//p' "$manifest")
jaeger_module_version=v1.76.0 # Jaeger release v2.13.0
prometheus_module_version=v0.314.0 # Prometheus 3.14.0

# A change to the manifest rebuilds the collector, even at the same release.
manifest_sum=$(sha256sum "$manifest" | cut -c1-12)
collector_dir="$cache/otelcol-stageflow-$collector_version-$manifest_sum"
jaeger_dir="$cache/jaeger-$jaeger_module_version"
prometheus_dir="$cache/prometheus-$prometheus_module_version"

print_paths() {
  echo "collector_version=$collector_version"
  echo "jaeger_module_version=$jaeger_module_version"
  echo "prometheus_module_version=$prometheus_module_version"
  echo "gomodcache=$cache/go/mod"
  echo "otelcol=$collector_dir/otelcol-stageflow"
  echo "jaeger=$jaeger_dir/jaeger"
  echo "prometheus=$prometheus_dir/prometheus"
  echo "promtool=$prometheus_dir/promtool"
}
if [ "${1:-}" = "--print" ]; then
  print_paths
  exit 0
fi

# Everything the build downloads or caches stays under $cache (delete it to start cold).
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOPATH="$cache/go/path"
# GOWORK=off: a release's go.work names nested modules its module zip does not contain.
export GOFLAGS="-trimpath -modcacherw -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off
mkdir -p "$cache/logs"

# Copy a module release's source out of the module cache into $2 (a fresh scratch directory).
module_source() {
  local dir
  dir=$(go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || { echo "go mod download $1 gave no directory" >&2; return 1; }
  rm -rf "$2" && mkdir -p "$(dirname "$2")" && cp -r "$dir" "$2" && chmod -R u+w "$2"
}

build_collector() {
  local work="$cache/work/otelcol-$collector_version"
  rm -rf "$work" && mkdir -p "$work"
  GOBIN="$work/bin" go install "go.opentelemetry.io/collector/cmd/builder@v$collector_version"
  # output_path in the manifest is relative: the builder writes the sources and binary under $work.
  (cd "$work" && ./bin/builder --config "$manifest")
  mkdir -p "$collector_dir.tmp" && mv "$work/otelcol-stageflow/otelcol-stageflow" "$collector_dir.tmp/"
  rm -rf "$collector_dir" && mv "$collector_dir.tmp" "$collector_dir" && rm -rf "$work"
}

build_jaeger() {
  local work="$cache/work/jaeger-$jaeger_module_version"
  module_source "github.com/jaegertracing/jaeger@$jaeger_module_version" "$work"
  # Without the `ui` build tag the binary serves a placeholder page instead of the UI bundle
  # (which is built with npm from a separate repository); the query API is complete.
  mkdir -p "$jaeger_dir.tmp" && (cd "$work" && go build -o "$jaeger_dir.tmp/jaeger" ./cmd/jaeger)
  rm -rf "$jaeger_dir" && mv "$jaeger_dir.tmp" "$jaeger_dir" && rm -rf "$work"
}

build_prometheus() {
  local work="$cache/work/prometheus-$prometheus_module_version"
  local version="3.${prometheus_module_version#v0.3}" # v0.314.0 -> 3.14.0
  module_source "github.com/prometheus/prometheus@$prometheus_module_version" "$work"
  # Without the `builtinassets` tag the web UI is read from disk (absent here); the HTTP API is complete.
  local ldflags="-X github.com/prometheus/common/version.Version=$version"
  mkdir -p "$prometheus_dir.tmp"
  (cd "$work" && go build -ldflags "$ldflags" -o "$prometheus_dir.tmp/" ./cmd/prometheus ./cmd/promtool)
  rm -rf "$prometheus_dir" && mv "$prometheus_dir.tmp" "$prometheus_dir" && rm -rf "$work"
}

# Build what is missing, in parallel (downloads of one overlap compiles of another).
pids=() names=()
[ "$#" -gt 0 ] || set -- collector jaeger prometheus
for name in "$@"; do
  case $name in
    collector) target="$collector_dir/otelcol-stageflow" ;;
    jaeger) target="$jaeger_dir/jaeger" ;;
    prometheus) target="$prometheus_dir/promtool" ;;
    *) echo "build-stack: unknown name $name (collector, jaeger, prometheus)" >&2 && exit 2 ;;
  esac
  [ -x "$target" ] && continue
  echo "build-stack: building $name (log: $cache/logs/$name.log)" >&2
  ("build_$name" >"$cache/logs/$name.log" 2>&1) &
  pids+=("$!") names+=("$name")
done
failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "build-stack: building ${names[$i]} failed; the end of its log:" >&2
    tail -n 40 "$cache/logs/${names[$i]}.log" >&2
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
print_paths

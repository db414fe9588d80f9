#!/usr/bin/env bash
# Rolls a Thali release out to Kubernetes, and rolls it back by itself when it fails.
#
#   deploy/rollout.sh OVERLAY TAG          e.g. deploy/rollout.sh deploy/k8s/overlays/prod 0.2.0
#
# 1. Renders OVERLAY with the image tag TAG (a temporary kustomization on top of it; the overlay's
#    files are not changed).
# 2. Notes each Deployment's current revision.
# 3. Applies everything but the Deployments and autoscalers (the Namespace, the ConfigMap the
#    migrations read, Services, policies, and the thali-migrate Job of the new image) and waits
#    for the Job. If it fails or times out, the Deployments are not touched (migrations are
#    expand-only, so the running release keeps working on the new schema; docs/ops/deploy.md)
#    and the script exits 1.
# 4. Applies the whole release, then waits for each Deployment's rollout (readiness gates every
#    new pod; maxUnavailable 0 keeps the old pods serving meanwhile).
# 5. If the apply fails or a rollout does not finish in time, every Deployment whose revision
#    changed is undone to the revision noted in step 2, the undo is waited for, and the script
#    exits 2. What step 3 applied (the ConfigMap among it) stays: migrations and configuration
#    are expand-only, so the previous release runs with them (docs/ops/deploy.md).
#
# Environment: NAMESPACE (thali), TIMEOUT (300s per rollout), MIGRATE_TIMEOUT (600, seconds; the
# Job's own activeDeadlineSeconds), KUBECTL (kubectl), KUSTOMIZE (empty: `kubectl kustomize`; a
# standalone kustomize binary otherwise).
set -euo pipefail

usage() { echo "usage: $0 OVERLAY TAG" >&2; exit 64; }
[ $# -eq 2 ] || usage
overlay=$1
tag=$2
[ -f "$overlay/kustomization.yaml" ] || { echo "$overlay has no kustomization.yaml" >&2; exit 64; }
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || { echo "not an image tag: $tag" >&2; exit 64; }
[[ "${MIGRATE_TIMEOUT:-600}" =~ ^[0-9]{1,6}$ ]] || { echo "MIGRATE_TIMEOUT is whole seconds: ${MIGRATE_TIMEOUT}" >&2; exit 64; }

if ! command -v "${KUBECTL:-kubectl}" >/dev/null; then
  echo "${KUBECTL:-kubectl} not found: install kubectl, or name it with KUBECTL" >&2
  exit 69
fi
if [ -n "${KUSTOMIZE:-}" ] && ! command -v "$KUSTOMIZE" >/dev/null; then
  echo "KUSTOMIZE=$KUSTOMIZE not found" >&2
  exit 69
fi
ns=${NAMESPACE:-thali}
timeout=${TIMEOUT:-300s}
migrate_timeout=${MIGRATE_TIMEOUT:-600}
poll=${POLL_S:-2}
kubectl=${KUBECTL:-kubectl}
deployments=(identity storefront notifications booking payments facade)
say() { printf '[rollout] %s\n' "$*"; }
k() { "$kubectl" -n "$ns" "$@"; }
revision() { # deployment -> its revision, empty when it does not exist; fails when unreadable
  k get deployment "$1" --ignore-not-found \
    -o 'jsonpath={.metadata.annotations.deployment\.kubernetes\.io/revision}'
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# kustomize takes a directory resource only by a relative path.
overlay_rel=$(realpath --relative-to="$work" "$overlay")
cat > "$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $overlay_rel
images:
  - name: ghcr.io/thali/thali
    newTag: "$tag"
EOF
if [ -n "${KUSTOMIZE:-}" ]; then
  "$KUSTOMIZE" build "$work" > "$work/release.yaml"
else
  "$kubectl" kustomize "$work" > "$work/release.yaml"
fi
# Everything but the Deployments and their autoscalers, for step 3.
awk 'function flush() { doc = doc "\n"; if (doc != "\n" && doc !~ /\nkind: (Deployment|HorizontalPodAutoscaler)\n/) printf "%s---\n", substr(doc, 2); doc = "" }
     /^---$/ { flush(); next } { doc = doc "\n" $0 } END { flush() }' \
  "$work/release.yaml" > "$work/prelude.yaml"
say "rendered $overlay at ghcr.io/thali/thali:$tag"

# A revision that cannot be read stops the release here, before anything is applied: without it
# a failed rollout could not be undone.
declare -A before
for d in "${deployments[@]}"; do
  before[$d]=$(revision "$d") || { say "cannot read deployment/$d; nothing was applied"; exit 1; }
done

say "migrations (job/thali-migrate)"
k delete job thali-migrate --ignore-not-found --wait=true
k apply -f "$work/prelude.yaml"
outcome=""
deadline=$(( $(date +%s) + migrate_timeout ))
while :; do
  conditions=$(k get job thali-migrate -o 'jsonpath={.status.conditions[?(@.status=="True")].type}' || true)
  case " $conditions " in
    *" Complete "*) outcome=complete; break ;;
    *" Failed "*) outcome=failed; break ;;
  esac
  [ "$(date +%s)" -lt "$deadline" ] || break
  sleep "$poll"
done
if [ "$outcome" != complete ]; then
  say "the migrations ${outcome:-did not finish in ${migrate_timeout}s}; no Deployment was touched. Their log:"
  k logs job/thali-migrate --tail=50 || true
  exit 1
fi

rollback() { # why
  say "$1: rolling back"
  local status=0 any=0 d now old
  for d in "${deployments[@]}"; do
    old=${before[$d]}
    now=$(revision "$d" 2>/dev/null) || now="?"
    if [ -n "$old" ] && [ "$now" != "$old" ]; then
      any=1
      say "deployment/$d: revision ${now:-?} back to $old"
      k rollout undo "deployment/$d" "--to-revision=$old" || status=1
    fi
  done
  if [ $any = 0 ]; then
    say "no Deployment had a revision before this release (a first deploy) or none changed: nothing to undo"
  fi
  for d in "${deployments[@]}"; do
    if [ -n "${before[$d]}" ]; then
      k rollout status "deployment/$d" "--timeout=$timeout" || status=1
    fi
  done
  if [ $status -ne 0 ]; then
    say "the rollback did not finish cleanly: look at the Deployments by hand"
  fi
  say "ghcr.io/thali/thali:$tag is not out"
  exit 2
}

say "applying the release"
k apply -f "$work/release.yaml" || rollback "the apply failed part-way"

for d in "${deployments[@]}"; do
  if ! k rollout status "deployment/$d" "--timeout=$timeout"; then
    k describe "deployment/$d" | tail -20 || true
    rollback "deployment/$d did not become ready in $timeout"
  fi
done
say "ghcr.io/thali/thali:$tag is out"

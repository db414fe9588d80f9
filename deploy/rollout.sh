#!/usr/bin/env bash
# Rolls a Thali release out to Kubernetes, and rolls it back by itself when it fails.
#
#   deploy/rollout.sh OVERLAY TAG          e.g. deploy/rollout.sh deploy/k8s/overlays/prod 0.2.0
#
# 1. Renders OVERLAY with the image tag TAG (a temporary kustomization on top of it; the overlay's
#    files are not changed).
# 2. Notes each Deployment's current revision.
# 3. Runs the migrations first: the thali-migrate Job of the new image, waited for. If it fails,
#    nothing else is applied (migrations are expand-only, so the running release keeps working
#    on the new schema; docs/ops/deploy.md) and the script exits 1.
# 4. Applies everything, then waits for each Deployment's rollout (readiness gates every new
#    pod; maxUnavailable 0 keeps the old pods serving meanwhile).
# 5. If a rollout does not finish in time, every Deployment whose revision changed is undone to
#    the revision noted in step 2, the undo is waited for, and the script exits 2.
#
# Environment: NAMESPACE (thali), TIMEOUT (300s per wait), KUBECTL (kubectl), KUSTOMIZE (empty:
# `kubectl kustomize`; a standalone kustomize binary otherwise).
set -euo pipefail

usage() { echo "usage: $0 OVERLAY TAG" >&2; exit 64; }
[ $# -eq 2 ] || usage
overlay=$1
tag=$2
[ -f "$overlay/kustomization.yaml" ] || { echo "$overlay has no kustomization.yaml" >&2; exit 64; }
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || { echo "not an image tag: $tag" >&2; exit 64; }

ns=${NAMESPACE:-thali}
timeout=${TIMEOUT:-300s}
kubectl=${KUBECTL:-kubectl}
deployments=(identity storefront notifications booking payments facade)
say() { printf '[rollout] %s\n' "$*"; }
k() { "$kubectl" -n "$ns" "$@"; }

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
say "rendered $overlay at ghcr.io/thali/thali:$tag"

declare -A before
for d in "${deployments[@]}"; do
  before[$d]=$(k get deployment "$d" --ignore-not-found \
    -o 'jsonpath={.metadata.annotations.deployment\.kubernetes\.io/revision}')
done

say "migrations (job/thali-migrate)"
k delete job thali-migrate --ignore-not-found --wait=true
k apply -f "$work/release.yaml" -l app.kubernetes.io/name=thali-migrate
if ! k wait --for=condition=complete job/thali-migrate "--timeout=$timeout"; then
  say "the migrations did not complete; nothing else was applied. Their log:"
  k logs job/thali-migrate --tail=50 || true
  exit 1
fi

say "applying the release"
k apply -f "$work/release.yaml"

failed=""
for d in "${deployments[@]}"; do
  if ! k rollout status "deployment/$d" "--timeout=$timeout"; then
    failed=$d
    break
  fi
done
if [ -z "$failed" ]; then
  say "ghcr.io/thali/thali:$tag is out"
  exit 0
fi

say "deployment/$failed did not become ready in $timeout: rolling back"
k describe "deployment/$failed" | tail -20 || true
status=0
for d in "${deployments[@]}"; do
  now=$(k get deployment "$d" --ignore-not-found \
    -o 'jsonpath={.metadata.annotations.deployment\.kubernetes\.io/revision}')
  old=${before[$d]}
  if [ -n "$old" ] && [ "$now" != "$old" ]; then
    say "deployment/$d: revision $now back to $old"
    k rollout undo "deployment/$d" "--to-revision=$old" || status=1
  fi
done
for d in "${deployments[@]}"; do
  if [ -n "${before[$d]}" ]; then
    k rollout status "deployment/$d" "--timeout=$timeout" || status=1
  fi
done
if [ $status -ne 0 ]; then
  say "the rollback did not finish cleanly: look at the Deployments by hand"
fi
say "rolled back; ghcr.io/thali/thali:$tag is not out"
exit 2

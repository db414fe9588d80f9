//! `deploy/rollout.sh` against a fake `kubectl` on PATH (issue 14 part 3): the migrations run
//! first and a failed one stops the release; a rollout that does not become ready is undone to
//! the revisions noted before, for every Deployment it changed; a good release is left alone.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Answers as a cluster would, and writes every call to `$FAKE_LOG`; what is applied, and the
/// kustomization rendered, are copied to `$FAKE_STATE`. Each Deployment is at revision 3 until
/// the release is applied, 4 after (`FAKE_UNCHANGED=<name>` stays at 3; with `FAKE_NEW=1` none
/// exists before). `FAKE_FAIL_ROLLOUT=<name>` makes that rollout miss its deadline (until an
/// undo); `FAKE_MIGRATION=failed|hang` makes the Job fail or never finish; `FAKE_FAIL_APPLY=1`
/// makes the release's apply fail after changing the Deployments.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
args=" $* "
case "$args" in
  *" kustomize "*)
    cp "$2/kustomization.yaml" "$FAKE_STATE/rendered-kustomization.yaml"
    printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: thali-config\n---\n'
    printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: identity\n---\n'
    printf 'apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: identity\n---\n'
    printf 'apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: thali-migrate\n'
    exit 0 ;;
  *" get deployment "*)
    name=$5
    if [ -n "${FAKE_NEW:-}" ] && [ ! -f "$FAKE_STATE/applied" ]; then exit 0; fi
    if [ "$name" = "${FAKE_UNCHANGED:-none}" ]; then printf 3; exit 0; fi
    if [ -f "$FAKE_STATE/applied" ]; then printf 4; else printf 3; fi; exit 0 ;;
  *" delete job thali-migrate "*) exit 0 ;;
  *" apply -f "*"/prelude.yaml "*) cp "$5" "$FAKE_STATE/prelude.yaml"; exit 0 ;;
  *" apply -f "*"/release.yaml "*)
    touch "$FAKE_STATE/applied"
    if [ -n "${FAKE_FAIL_APPLY:-}" ]; then
      echo 'Error from server (Forbidden): admission webhook denied the request' >&2; exit 1
    fi
    exit 0 ;;
  *" get job thali-migrate "*)
    case "${FAKE_MIGRATION:-}" in failed) printf Failed ;; hang) ;; *) printf Complete ;; esac
    exit 0 ;;
  *" logs job/thali-migrate "*) echo "migrate: cannot reach the database"; exit 0 ;;
  *" rollout status deployment/${FAKE_FAIL_ROLLOUT:-none} "*)
    if [ ! -f "$FAKE_STATE/undone" ]; then
      echo "error: deployment \"$FAKE_FAIL_ROLLOUT\" exceeded its progress deadline" >&2; exit 1
    fi
    exit 0 ;;
  *" rollout status deployment/"*) exit 0 ;;
  *" rollout undo deployment/"*) touch "$FAKE_STATE/undone"; exit 0 ;;
  *" describe deployment/"*) echo "Events: Readiness probe failed"; exit 0 ;;
esac
echo "fake kubectl: unexpected call: $*" >&2
exit 3
"#;

struct Run {
    code: i32,
    output: String,
    calls: Vec<String>,
    /// The kustomization the script rendered, and the prelude it applied before the Job.
    rendered: String,
    prelude: String,
}

fn rollout(tag: &str, env: &[(&str, &str)]) -> Run {
    let dir = std::env::temp_dir().join(format!("thali-rollout-{}", uuid::Uuid::now_v7()));
    let (bin, state) = (dir.join("bin"), dir.join("state"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let kubectl = bin.join("kubectl");
    std::fs::write(&kubectl, FAKE_KUBECTL).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let log = dir.join("calls.log");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg(root().join("deploy/rollout.sh"))
        .arg(root().join("deploy/k8s/overlays/prod"))
        .arg(tag)
        .env("PATH", path)
        .env("FAKE_LOG", &log)
        .env("FAKE_STATE", &state)
        .env("TIMEOUT", "5s")
        .env("POLL_S", "0.1")
        .env_remove("KUSTOMIZE")
        .env_remove("KUBECTL")
        .env_remove("NAMESPACE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let rendered = std::fs::read_to_string(state.join("rendered-kustomization.yaml")).unwrap_or_default();
    let prelude = std::fs::read_to_string(state.join("prelude.yaml")).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        calls,
        rendered,
        prelude,
    }
}

const PARTS: [&str; 6] = [
    "identity",
    "storefront",
    "notifications",
    "booking",
    "payments",
    "facade",
];

impl Run {
    fn at(&self, needle: &str) -> usize {
        self.calls
            .iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no call with {needle:?}: {:#?}", self.calls))
    }

    fn has(&self, needle: &str) -> bool {
        self.calls.iter().any(|c| c.contains(needle))
    }

    fn undone(&self, part: &str) -> bool {
        self.calls
            .iter()
            .any(|c| c == &format!("-n thali rollout undo deployment/{part} --to-revision=3"))
    }
}

#[test]
fn a_rollout_that_misses_its_deadline_is_undone_to_the_revisions_before_it() {
    let run = rollout(
        "0.2.0",
        &[("FAKE_FAIL_ROLLOUT", "storefront"), ("FAKE_UNCHANGED", "notifications")],
    );
    assert_eq!(run.code, 2, "{}\n{:#?}", run.output, run.calls);
    assert!(
        run.output.contains("deployment/storefront did not become ready") && run.output.contains("is not out"),
        "{}",
        run.output
    );
    // The overlay, by a relative path, at the release's tag.
    assert!(
        run.rendered.contains("newTag: \"0.2.0\"") && run.rendered.contains("deploy/k8s/overlays/prod"),
        "{}",
        run.rendered
    );
    assert!(
        !run.rendered.contains("\n  - /"),
        "kustomize refuses an absolute path: {}",
        run.rendered
    );
    // Before the Job: its ConfigMap and the Job itself, not the Deployments or autoscalers.
    assert!(
        run.prelude.contains("kind: ConfigMap") && run.prelude.contains("kind: Job"),
        "{}",
        run.prelude
    );
    assert!(
        !run.prelude.contains("kind: Deployment") && !run.prelude.contains("kind: HorizontalPodAutoscaler"),
        "{}",
        run.prelude
    );
    // Every call but the rendering is in the release's namespace.
    assert!(
        run.calls
            .iter()
            .filter(|c| !c.starts_with("kustomize "))
            .all(|c| c.starts_with("-n thali ")),
        "{:#?}",
        run.calls
    );
    // The prelude and the Job, then the release, then the rollouts in order until the failing one.
    assert!(run.at("prelude.yaml") < run.at("get job thali-migrate"));
    assert!(run.at("get job thali-migrate") < run.at("release.yaml"));
    assert!(run.at("release.yaml") < run.at("rollout status deployment/identity"));
    assert!(run.at("rollout status deployment/storefront") < run.at("rollout undo"));
    // Nothing after the failing one is waited for before the undo (only after it, for the undo).
    assert!(run.at("rollout status deployment/notifications") > run.at("rollout undo"));
    // Every Deployment the release changed goes back to the revision it had; the one it did not
    // change is not moved.
    for part in PARTS.iter().filter(|p| **p != "notifications") {
        assert!(run.undone(part), "{part} undone: {:#?}", run.calls);
    }
    assert!(!run.has("rollout undo deployment/notifications"), "{:#?}", run.calls);
}

#[test]
fn an_apply_that_fails_part_way_is_undone_too() {
    let run = rollout("0.2.0", &[("FAKE_FAIL_APPLY", "1")]);
    assert_eq!(run.code, 2, "{}\n{:#?}", run.output, run.calls);
    assert!(run.output.contains("the apply failed part-way"), "{}", run.output);
    for part in PARTS {
        assert!(run.undone(part), "{part} undone: {:#?}", run.calls);
    }
}

#[test]
fn a_first_deploy_that_fails_has_nothing_to_undo_and_says_so() {
    let run = rollout("0.2.0", &[("FAKE_NEW", "1"), ("FAKE_FAIL_ROLLOUT", "booking")]);
    assert_eq!(run.code, 2, "{}\n{:#?}", run.output, run.calls);
    assert!(run.output.contains("nothing to undo"), "{}", run.output);
    assert!(!run.has("rollout undo"), "{:#?}", run.calls);
}

#[test]
fn a_failed_or_unfinished_migration_stops_the_release_before_any_deployment_is_touched() {
    for (migration, said) in [("failed", "the migrations failed"), ("hang", "did not finish in 1s")] {
        let run = rollout("0.2.0", &[("FAKE_MIGRATION", migration), ("MIGRATE_TIMEOUT", "1")]);
        assert_eq!(run.code, 1, "{migration}: {}\n{:#?}", run.output, run.calls);
        assert!(
            run.output.contains(said) && run.output.contains("cannot reach the database"),
            "{migration}: the migration's log is shown: {}",
            run.output
        );
        assert!(!run.has("release.yaml"), "{migration}: {:#?}", run.calls);
        assert!(!run.has("rollout"), "{migration}: {:#?}", run.calls);
    }
}

#[test]
fn a_good_release_is_applied_waited_for_and_left_alone() {
    let run = rollout("0.2.0", &[]);
    assert_eq!(run.code, 0, "{}\n{:#?}", run.output, run.calls);
    assert!(
        run.output.contains("ghcr.io/thali/thali:0.2.0 is out"),
        "{}",
        run.output
    );
    for part in PARTS {
        assert!(
            run.has(&format!("-n thali rollout status deployment/{part} ")),
            "{part} waited for: {:#?}",
            run.calls
        );
    }
    assert!(!run.has("undo"), "{:#?}", run.calls);
}

#[test]
fn a_tag_that_is_not_an_image_tag_is_refused_before_any_call() {
    for tag in ["", "0.2.0; rm -rf /", "../x", "a b"] {
        let run = rollout(tag, &[]);
        assert_eq!(run.code, 64, "{tag:?}: {}", run.output);
        assert!(run.calls.is_empty(), "{tag:?}: {:#?}", run.calls);
    }
}

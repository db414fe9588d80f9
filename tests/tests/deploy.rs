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

/// Answers as a cluster would, and writes every call to `$FAKE_LOG`. Each Deployment is at
/// revision 3 until the release is applied, 4 after. `FAKE_FAIL_ROLLOUT=<name>` makes that
/// Deployment's rollout miss its deadline (until an undo); `FAKE_FAIL_MIGRATION=1` makes the
/// migration Job fail.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
args=" $* "
case "$args" in
  *" kustomize "*) printf 'apiVersion: v1\nkind: List\nitems: []\n'; exit 0 ;;
  *" get deployment "*)
    if [ -f "$FAKE_STATE/applied" ]; then printf 4; else printf 3; fi; exit 0 ;;
  *" delete job thali-migrate "*) exit 0 ;;
  *" apply -f "*" -l app.kubernetes.io/name=thali-migrate "*) exit 0 ;;
  *" apply -f "*) touch "$FAKE_STATE/applied"; exit 0 ;;
  *" wait --for=condition=complete job/thali-migrate "*)
    if [ -n "${FAKE_FAIL_MIGRATION:-}" ]; then
      echo "error: timed out waiting for the condition on jobs/thali-migrate" >&2; exit 1
    fi
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
    std::fs::remove_dir_all(&dir).unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        calls,
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

#[test]
fn a_rollout_that_misses_its_deadline_is_undone_to_the_revisions_before_it() {
    let run = rollout("0.2.0", &[("FAKE_FAIL_ROLLOUT", "storefront")]);
    assert_eq!(run.code, 2, "{}\n{:#?}", run.output, run.calls);
    assert!(
        run.output.contains("deployment/storefront did not become ready") && run.output.contains("is not out"),
        "{}",
        run.output
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
    let at = |needle: &str| {
        run.calls
            .iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no call with {needle:?}: {:#?}", run.calls))
    };
    // Migrations, then the release, then the rollouts in order until the failing one.
    assert!(
        at("apply -f") < at("wait --for=condition=complete job/thali-migrate"),
        "the Job first"
    );
    let full_apply = run
        .calls
        .iter()
        .position(|c| c.contains("apply -f") && !c.contains(" -l "))
        .expect("the release is applied");
    assert!(at("wait --for") < full_apply);
    assert!(full_apply < at("rollout status deployment/identity"));
    // Nothing after the failing one is waited for before the undo (only after it, for the undo).
    assert!(at("rollout status deployment/notifications") > at("rollout undo"));
    // Every Deployment the release changed goes back to the revision it had.
    for part in PARTS {
        assert!(
            run.calls
                .iter()
                .any(|c| c == &format!("-n thali rollout undo deployment/{part} --to-revision=3")),
            "{part} undone: {:#?}",
            run.calls
        );
    }
    assert!(at("rollout undo") > at("rollout status deployment/storefront"));
}

#[test]
fn a_failed_migration_stops_the_release_before_anything_else_is_applied() {
    let run = rollout("0.2.0", &[("FAKE_FAIL_MIGRATION", "1")]);
    assert_eq!(run.code, 1, "{}\n{:#?}", run.output, run.calls);
    assert!(
        run.output.contains("nothing else was applied") && run.output.contains("cannot reach the database"),
        "the migration's log is shown: {}",
        run.output
    );
    assert!(
        !run.calls.iter().any(|c| c.contains("apply -f") && !c.contains(" -l ")),
        "{:#?}",
        run.calls
    );
    assert!(!run.calls.iter().any(|c| c.contains("rollout")), "{:#?}", run.calls);
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
            run.calls
                .iter()
                .any(|c| c.starts_with(&format!("-n thali rollout status deployment/{part} "))),
            "{part} waited for: {:#?}",
            run.calls
        );
    }
    assert!(!run.calls.iter().any(|c| c.contains("undo")), "{:#?}", run.calls);
}

#[test]
fn a_tag_that_is_not_an_image_tag_is_refused_before_any_call() {
    for tag in ["", "0.2.0; rm -rf /", "../x", "a b"] {
        let run = rollout(tag, &[]);
        assert_eq!(run.code, 64, "{tag:?}: {}", run.output);
        assert!(run.calls.is_empty(), "{tag:?}: {:#?}", run.calls);
    }
}

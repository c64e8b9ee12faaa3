//! The HTTP API, property-based: `tools/schemathesis.sh` runs schemathesis (from PyPI;
//! `.ci/run` installs it) against a running `stasis serve`, generating requests from the
//! server's own `/openapi.json`. It fails on any 5xx and on any response that does not
//! match the document (schema, status code, content type).
//!
//! Without schemathesis this test fails, unless `STASIS_SKIP_SCHEMATHESIS=1` is set.

use std::process::Command;

#[test]
fn the_api_matches_its_openapi_document_under_generated_requests() {
    let have = Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("STASIS_SKIP_SCHEMATHESIS").is_some(),
            "schemathesis is not installed (`pip install schemathesis`, as .ci/run does); \
             set STASIS_SKIP_SCHEMATHESIS=1 to skip this test"
        );
        eprintln!("skipped: no schemathesis");
        return;
    }
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tools/schemathesis.sh"
    ))
    .arg(env!("CARGO_BIN_EXE_stasis"))
    .arg("100")
    .output()
    .expect("run tools/schemathesis.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let summary = text
        .lines()
        .rfind(|l| l.starts_with("schemathesis: "))
        .unwrap_or_default();
    assert!(summary.contains(" 0 failed"), "{text}");
    let passed: u32 = summary
        .trim_start_matches("schemathesis: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 0, "schemathesis ran no operation: {text}");
    eprintln!("{summary}");
}

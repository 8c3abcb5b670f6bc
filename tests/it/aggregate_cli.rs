//! `adclick aggregate` through the real binary: CSV out, and bad input named by file and line.

use std::process::Command;

fn adclick() -> Command {
    Command::new(env!("CARGO_BIN_EXE_adclick"))
}

const CLICK: &str = r#"{"click_id":"UUID","campaign_id":7,"ad_id":1,"user_id":1,"ip":"10.0.0.1","user_agent":"Mozilla","country":"US","event_time_ms":TIME}"#;

fn click(uuid_tail: u32, time: u64) -> String {
    CLICK
        .replace("UUID", &format!("6f1c1a4e-8a2b-4c3d-9e0f-{uuid_tail:012}"))
        .replace("TIME", &time.to_string())
}

#[test]
fn aggregates_a_historical_file_into_csv() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clicks.ndjson");
    let lines = [
        click(1, 1_000),
        click(2, 2_000),
        click(1, 1_000), // a resend
        click(3, 61_000),
        click(4, 500_000),
        click(5, 30_000), // past the window's lateness once time reached 500 s: late
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = adclick()
        .args(["aggregate", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let csv = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        csv,
        "window_start_ms,campaign_id,ad_id,clicks,unique,fraud,late,unverified\n\
         0,7,1,4,2,0,1,0\n\
         60000,7,1,1,1,0,0,0\n\
         480000,7,1,1,1,0,0,0\n"
    );
}

/// Judged at a fixed clock (`--now-ms`), a click stamped more than ingest's future bound plus
/// slack ahead (an outside producer's microseconds) is quarantined and named, not counted, and
/// a click ahead within the bound is counted in its own window but never closes the others.
#[test]
fn aggregate_quarantines_absurd_event_times_and_bounds_the_watermark_by_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clicks.ndjson");
    let now_ms: u64 = 1_800_000_000_000;
    let lines = [
        click(1, now_ms),
        click(2, now_ms * 1000), // microseconds
        click(3, now_ms + 295_000),
        click(1, now_ms), // a resend: still a duplicate, its window still open
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = adclick()
        .args(["aggregate", "--now-ms", &now_ms.to_string(), "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2: quarantined: event_time_ms 1800000000000000"),
        "{stderr}"
    );
    let csv = String::from_utf8(output.stdout).unwrap();
    let window = now_ms - now_ms % 60_000;
    let ahead = (now_ms + 295_000) - (now_ms + 295_000) % 60_000;
    assert_eq!(
        csv,
        format!(
            "window_start_ms,campaign_id,ad_id,clicks,unique,fraud,late,unverified\n\
             {window},7,1,2,1,0,0,0\n\
             {ahead},7,1,1,1,0,0,0\n"
        )
    );
}

#[test]
fn bad_input_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.ndjson");
    std::fs::write(&input, format!("{}\n{{\"campaign_id\":1}}\n", click(1, 5))).unwrap();
    let output = adclick()
        .args(["aggregate", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.ndjson: line 2: missing field `click_id`"),
        "{stderr}"
    );
}

#[test]
fn bad_scenarios_name_the_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    let text = std::fs::read_to_string("scenarios/quickstart.toml")
        .unwrap()
        .replace("partitions = 4", "partitions = 0");
    std::fs::write(&path, text).unwrap();
    let output = adclick().arg("run").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.toml"), "{stderr}");
    assert!(stderr.contains("partitions"), "{stderr}");
}

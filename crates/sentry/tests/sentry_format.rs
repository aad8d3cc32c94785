//! Format tests of the Sentry pieces against the reference data in `tests/data/sentry/`:
//! the validator against Relay's own verdicts on 27 accept/reject cases, and the example
//! chunk and envelope of `docs/sentry-format.md` (section "Example") reproduced with the
//! chunk builder.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use profiler_sentry::envelope::{envelope_bytes, parse_envelope};
use profiler_sentry::validate::validate_item;
use profiler_sentry::{
    ChunkBuilder, ChunkMeta, FramePlatform, ImageInfo, InAppRules, ResolvedFrame,
    debug_id_from_build_id, validate,
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sentry")
        .join(name)
}

/// Every `chunk-*.json` case gives the outcome Relay 26.9.0 gave (results.txt).
#[test]
fn validate_agrees_with_relay_on_every_case() {
    let results = std::fs::read_to_string(data("relay-cases/results.txt")).unwrap();
    let mut checked = 0;
    for line in results.lines() {
        let Some((file, verdict)) = line.split_once(": ") else {
            continue;
        };
        if !file.starts_with("chunk-") {
            continue;
        }
        let expected: Result<(), String> = if verdict.starts_with("OK") {
            Ok(())
        } else {
            let reason = verdict
                .rsplit_once("discard_reason=")
                .map(|(_, r)| r.trim_end_matches(')').to_string())
                .unwrap_or_else(|| panic!("no discard reason in {line}"));
            Err(reason)
        };
        let text = std::fs::read_to_string(data(&format!("relay-cases/{file}"))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let got = validate(&value);
        match (&expected, &got) {
            (Ok(()), Ok(())) => {}
            (Err(reason), Err(msg)) => assert!(
                msg.starts_with(&format!("{reason}:")),
                "{file}: expected {reason}, got {msg}"
            ),
            _ => panic!("{file}: expected {expected:?}, got {got:?}"),
        }
        checked += 1;
    }
    let files = std::fs::read_dir(data("relay-cases"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("chunk-")
        })
        .count();
    assert_eq!(checked, files, "every case file has a verdict");
    assert!(checked >= 27);
}

#[test]
fn item_platform_must_match_payload() {
    let text = std::fs::read_to_string(data("relay-cases/chunk-40_doc_example.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    validate_item(&v, Some("rust")).unwrap();
    let e = validate_item(&v, Some("python")).unwrap_err();
    assert!(e.starts_with("profiling_invalid_profile_type:"), "{e}");
}

/// Build the example of `docs/sentry-format.md` (section "Example") with the builder and
/// compare it with the reference.
#[test]
fn builder_reproduces_the_reference_example() {
    let reference = std::fs::read(data("native-example-profile-chunk.envelope")).unwrap();
    let env = parse_envelope(&reference).unwrap();
    assert_eq!(env.items.len(), 1);
    let ref_payload: serde_json::Value = serde_json::from_slice(&env.items[0].payload).unwrap();

    let exe = "/usr/local/bin/demo";
    let meta = ChunkMeta {
        profiler_id: "4d229f1d3807421ba62a5f8bc295d836".into(),
        release: Some("demo@1.0.0".into()),
        environment: Some("production".into()),
    };
    let mut b = ChunkBuilder::new(&meta, &InAppRules::default());
    let build_id: Vec<u8> = (0..20)
        .map(|i| {
            u8::from_str_radix(
                &"451caec77109ec4461b4b9baaa58833f530dec65"[i * 2..i * 2 + 2],
                16,
            )
            .unwrap()
        })
        .collect();
    b.add_image(ImageInfo {
        code_file: exe.into(),
        debug_id: debug_id_from_build_id(&build_id, true),
        code_id: Some("451caec77109ec4461b4b9baaa58833f530dec65".into()),
        image_addr: 0x5581a3c00000,
        image_size: 20480,
        image_vmaddr: 0,
    });
    let frame = |addr: u64, f: &str| ResolvedFrame {
        platform: FramePlatform::Native,
        instruction_addr: addr,
        function: Some(f.into()),
        file: None,
        line: None,
        module: Some(exe.into()),
    };
    let stack = [
        frame(0x5581a3c01158, "compute"),
        frame(0x5581a3c011a2, "main"),
    ];
    b.add_sample(4242, "demo", 1763724000.0101, &stack).unwrap();
    b.add_sample(4242, "demo", 1763724000.0200, &stack).unwrap();
    let chunk = b.finish().unwrap();

    let mut ours: serde_json::Value = serde_json::from_slice(&chunk.to_json()).unwrap();
    // Per-run and per-agent fields differ by design.
    assert_eq!(ours["chunk_id"].as_str().unwrap().len(), 32);
    assert_eq!(ours["client_sdk"]["name"], "profiler");
    let mut expected = ref_payload.clone();
    for v in [&mut ours, &mut expected] {
        v["chunk_id"] = serde_json::Value::Null;
        v["client_sdk"] = serde_json::Value::Null;
        v["debug_meta"]["images"][0]["arch"] = serde_json::Value::Null;
    }
    assert_eq!(ours, expected);

    // Envelope framing: same item header line, exact length, header keys.
    let sent_at = UNIX_EPOCH + Duration::from_micros(1_763_724_000_020_000);
    let bytes = chunk.to_envelope(sent_at);
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), 4, "three lines, each ending in \\n");
    assert!(lines[3].is_empty());
    let payload = chunk.to_json();
    let ref_lines: Vec<&[u8]> = reference.split(|&b| b == b'\n').collect();
    let item_line = String::from_utf8(lines[1].to_vec()).unwrap();
    let ref_item_line = String::from_utf8(ref_lines[1].to_vec()).unwrap();
    let ref_len = env.items[0].payload.len();
    assert_eq!(
        item_line,
        ref_item_line.replace(
            &format!("\"length\":{ref_len}"),
            &format!("\"length\":{}", payload.len())
        )
    );
    assert_eq!(lines[2], &payload[..]);
    let header: serde_json::Value = serde_json::from_slice(lines[0]).unwrap();
    let ref_header: serde_json::Value = serde_json::from_slice(ref_lines[0]).unwrap();
    assert_eq!(header["sent_at"], ref_header["sent_at"]);
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&header), keys(&ref_header));
    assert_eq!(header["sdk"]["name"], "profiler");
    assert_eq!(header["sdk"]["version"], env!("CARGO_PKG_VERSION"));

    // The reference payload wrapped by our writer gives the reference envelope, except the
    // SDK name in the header.
    let rewrapped = envelope_bytes(&env.items[0].payload, "rust", sent_at);
    let ref_text = String::from_utf8(reference.clone()).unwrap().replace(
        r#""sdk":{"name":"sentry.native.profiler-agent","version":"0.1.0"}"#,
        &format!(
            r#""sdk":{{"name":"profiler","version":"{}"}}"#,
            env!("CARGO_PKG_VERSION")
        ),
    );
    assert_eq!(String::from_utf8(rewrapped).unwrap(), ref_text);
}

//! The library examples run against real brokers: `any_broker` on NATS and Mosquitto (the
//! same binary, only the URL differs) and `request_reply` across NATS and RabbitMQ.
//! `cargo test -p polybridge` builds the examples next to the test binaries
//! (`target/<profile>/examples`); `cargo test --test examples` alone does not, so run
//! `cargo build -p polybridge --examples` first in that case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use polybridge_testkit::{shared, skip_reason, BrokerKind, Endpoint};

/// The built example `name`.
fn example(name: &str) -> PathBuf {
    // This test is target/<profile>/deps/examples-<hash>; examples are in
    // target/<profile>/examples.
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built (cargo test builds examples; run `cargo build -p polybridge --examples`)",
        path.display()
    );
    path
}

/// Runs `program args`, killing it if it outlives `deadline`.
fn run(program: &Path, args: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let end = Instant::now() + deadline;
    // Example output is small: it fits the pipe buffers until the process exits.
    while child.try_wait().expect("waiting for the example").is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "{} {args:?} did not finish within {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                program.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Asserts the example succeeded and printed `expected_last_line` last; returns stdout.
fn assert_ran(output: &Output, expected_last_line: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = format!(
        "exit {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    assert_eq!(stdout.lines().last(), Some(expected_last_line), "{report}");
    stdout
}

/// The shared broker's URL, or `None` when the broker is opted out.
fn url(kind: BrokerKind, endpoint: Endpoint) -> Option<String> {
    if let Some(reason) = skip_reason(kind) {
        eprintln!("skipped: {reason}");
        return None;
    }
    Some(
        shared(kind)
            .expect("broker for tests")
            .url(endpoint)
            .expect("endpoint"),
    )
}

#[test]
fn any_broker_runs_unchanged_on_nats_and_mosquitto() {
    let program = example("any_broker");
    for (kind, endpoint, name) in [
        (BrokerKind::Nats, Endpoint::Nats, "nats"),
        (BrokerKind::Mosquitto, Endpoint::Mqtt, "mqtt"),
    ] {
        let Some(url) = url(kind, endpoint) else {
            continue;
        };
        let output = run(&program, &[&url], Duration::from_secs(60));
        let stdout = assert_ran(&output, &format!("done: 3 published, 3 received on {name}"));
        for text in ["Hello, World!", "Xin chào thế giới!", "Bonjour le monde !"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with("received") && l.contains(text)),
                "{text:?} did not come back on {name}:\n{stdout}"
            );
        }
        // Both carry headers (NATS natively, MQTT 5 as user properties).
        assert!(stdout.contains("(lang vi)"), "{stdout}");
    }
}

#[test]
fn any_broker_runs_on_the_memory_broker_without_arguments() {
    let output = run(&example("any_broker"), &[], Duration::from_secs(30));
    assert_ran(&output, "done: 3 published, 3 received on memory");
}

#[test]
fn request_reply_round_trips_from_nats_through_rabbitmq() {
    let (Some(nats), Some(amqp)) = (
        url(BrokerKind::Nats, Endpoint::Nats),
        url(BrokerKind::RabbitMq, Endpoint::Amqp),
    ) else {
        return;
    };
    let output = run(
        &example("request_reply"),
        &[&nats, &amqp],
        Duration::from_secs(60),
    );
    let stdout = assert_ran(&output, "done: 3 round trips NATS → RabbitMQ → NATS");
    for (word, answer) in [
        ("hello", "HELLO"),
        ("xin chào", "XIN CHÀO"),
        ("polyglot", "POLYGLOT"),
    ] {
        let line = format!("requester  {word:?} → {answer:?}");
        assert!(stdout.lines().any(|l| l == line), "{line:?}:\n{stdout}");
    }
}

//! The polyglot seed example (`examples/polyglot/`) against real brokers: the seed's Python
//! clients (pika on RabbitMQ, paho-mqtt on Mosquitto, stomp.py on ActiveMQ — or RabbitMQ's
//! STOMP plugin when ActiveMQ is opted out) talk to each other through the `polybridge`
//! binary running `examples/polyglot/bridge.yaml`.
//!
//! The test runs `examples/polyglot/run.sh` (the script users run) with the harness's
//! broker URLs and asserts, from its output, that every subscriber received every seed
//! message and that no route bridged a message twice (no loops).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use polybridge_testkit::{python, shared, skip_reason, BrokerKind, Endpoint};

/// The whole scenario (bridge start, subscribers, publishers, checks) must finish within this.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(300);

/// The seed messages and who publishes them.
const SEED: [(&str, &str); 3] = [
    ("pika", "Hello, World!"),
    ("paho", "Hello MQTT"),
    ("stomp", "Hello STOMP"),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bridge crate is inside the workspace")
        .to_path_buf()
}

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` in its own process group; kills the group if it outlives `deadline`.
fn run_with_deadline(mut command: Command, deadline: Duration) -> Outcome {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run.sh starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for run.sh") {
            break status;
        }
        if Instant::now() >= end {
            // The script, the bridge and the Python clients share the process group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "run.sh did not finish within {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Outcome {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

#[test]
fn seed_clients_talk_to_each_other_through_the_bridge() {
    for kind in [BrokerKind::RabbitMq, BrokerKind::Mosquitto] {
        if let Some(reason) = skip_reason(kind) {
            eprintln!("skipped: {reason}");
            return;
        }
    }
    let python = match python() {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let rabbit = shared(BrokerKind::RabbitMq).expect("RabbitMQ for tests");
    let mosquitto = shared(BrokerKind::Mosquitto).expect("Mosquitto for tests");
    // The seed's STOMP broker is ActiveMQ; RabbitMQ's STOMP plugin stands in when it is
    // opted out.
    let stomp_url = match skip_reason(BrokerKind::ActiveMq) {
        None => shared(BrokerKind::ActiveMq)
            .expect("ActiveMQ for tests")
            .url(Endpoint::Stomp),
        Some(reason) => {
            eprintln!("{reason}: using RabbitMQ's STOMP plugin instead");
            rabbit.url(Endpoint::Stomp)
        }
    }
    .expect("a STOMP endpoint");
    let amqp_url = rabbit.url(Endpoint::Amqp).expect("an AMQP endpoint");
    let mqtt_url = mosquitto.url(Endpoint::Mqtt).expect("an MQTT endpoint");
    let admin_port = polybridge_testkit::free_loopback_port().expect("a free port");

    let root = repo_root();
    let mut command = Command::new("bash");
    command
        .arg(root.join("examples/polyglot/run.sh"))
        .current_dir(&root)
        .env("AMQP_URL", &amqp_url)
        .env("MQTT_URL", &mqtt_url)
        .env("STOMP_URL", &stomp_url)
        .env("POLYGLOT_ADMIN", format!("127.0.0.1:{admin_port}"))
        .env("POLYGLOT_TIMEOUT", "60")
        .env("POLYBRIDGE", env!("CARGO_BIN_EXE_polybridge"))
        .env("PYTHON", &python);
    let outcome = run_with_deadline(command, SCENARIO_DEADLINE);
    let report = format!(
        "run.sh exited with {}\nstdout:\n{}\nstderr:\n{}",
        outcome.status, outcome.stdout, outcome.stderr
    );
    assert!(outcome.status.success(), "{report}");
    println!("{}", outcome.stdout);

    // Each subscriber got each seed message, whichever client published it.
    for (receiver, _) in SEED {
        for (publisher, message) in SEED {
            let line = format!("{receiver} received: {message}");
            assert!(
                outcome.stdout.lines().any(|l| l == line),
                "the {receiver} subscriber did not receive {message:?} (published by {publisher}):\n{report}"
            );
        }
        assert!(
            outcome
                .stdout
                .lines()
                .any(|l| l == format!("{receiver} subscriber: ok")),
            "{report}"
        );
    }
    // No loops: each route took exactly what was published (from-paho also sees, and
    // filters out, the two messages the bridge put on test/topic).
    for line in [
        "route from-pika: received 1, filtered 0, acked 1, dead-lettered 0",
        "route from-paho: received 3, filtered 2, acked 1, dead-lettered 0",
        "route from-stomp: received 1, filtered 0, acked 1, dead-lettered 0",
    ] {
        assert!(
            outcome.stdout.lines().any(|l| l == line),
            "expected {line:?}:\n{report}"
        );
    }
}

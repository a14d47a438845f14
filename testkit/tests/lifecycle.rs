//! The harness starts, restarts, kills and tears down each of the six brokers, and leaves
//! no process behind — also when the test process itself is killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use polybridge_testkit::{private, shared, skip_reason, BrokerKind, BrokerProcess, Endpoint};

fn connects(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Waits until `cond` holds or `timeout` passes.
fn eventually(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn redis(port: u16, command: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(command.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// start → answers → restart (same ports) → answers → kill → restart → answers → drop →
/// every process gone, ports closed, data directory removed.
fn lifecycle(kind: BrokerKind, check_data: impl Fn(&BrokerProcess, bool)) {
    if let Some(reason) = skip_reason(kind) {
        eprintln!("{reason}");
        return;
    }
    let t = Instant::now();
    let mut b = private(kind).expect("broker starts");
    let started = t.elapsed();
    let ports: Vec<(Endpoint, u16)> = kind
        .endpoints()
        .iter()
        .map(|e| (*e, b.port(*e).unwrap()))
        .collect();
    for (e, _) in &ports {
        assert!(b.answers(*e), "{kind:?} {e:?} answers after start");
    }
    check_data(&b, false);
    let t = Instant::now();
    b.restart().expect("restart");
    let restarted = t.elapsed();
    for (e, p) in &ports {
        assert_eq!(b.port(*e), Some(*p), "same port after restart");
        assert!(b.answers(*e), "{kind:?} {e:?} answers after restart");
    }
    check_data(&b, true);
    let pids = b.pids();
    assert!(!pids.is_empty());
    b.kill().unwrap();
    assert!(
        BrokerProcess::wait_gone(&pids, Duration::from_secs(10)),
        "killed processes are gone: {:?}",
        pids.iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
            .collect::<Vec<_>>()
    );
    assert!(!b.is_running());
    b.restart().expect("restart after kill");
    for (e, _) in &ports {
        assert!(b.answers(*e), "{kind:?} {e:?} answers after kill + restart");
    }
    let pids = b.pids();
    let dir = b.dir().to_path_buf();
    let epmd = b.epmd_port();
    drop(b);
    assert!(
        BrokerProcess::wait_gone(&pids, Duration::from_secs(10)),
        "{kind:?}: processes left after drop: {pids:?}"
    );
    for (_, p) in &ports {
        assert!(
            eventually(Duration::from_secs(10), || !connects(*p)),
            "{kind:?}: port {p} still open"
        );
    }
    if let Some(epmd) = epmd {
        assert!(
            eventually(Duration::from_secs(10), || !connects(epmd)),
            "RabbitMQ's epmd on {epmd} still running"
        );
    }
    assert!(!dir.exists(), "data directory {dir:?} removed");
    eprintln!("{kind:?}: start {started:?}, restart {restarted:?}");
}

#[test]
fn redis_lifecycle_and_data_survives_restart() {
    lifecycle(BrokerKind::Redis, |b, restarted| {
        let port = b.port(Endpoint::Redis).unwrap();
        if restarted {
            assert!(
                redis(port, "GET pb-key\r\n").contains("kept"),
                "data survived a graceful restart"
            );
        } else {
            assert!(redis(port, "SET pb-key kept\r\n").starts_with("+OK"));
        }
    });
}

#[test]
fn mosquitto_lifecycle() {
    lifecycle(BrokerKind::Mosquitto, |_, _| {});
}

#[test]
fn nats_lifecycle() {
    lifecycle(BrokerKind::Nats, |_, _| {});
}

#[test]
fn rabbitmq_lifecycle() {
    lifecycle(BrokerKind::RabbitMq, |_, _| {});
}

#[test]
fn activemq_lifecycle() {
    lifecycle(BrokerKind::ActiveMq, |_, _| {});
}

#[test]
fn kafka_lifecycle() {
    lifecycle(BrokerKind::Kafka, |_, _| {});
}

#[test]
fn pause_stops_answers_and_resume_restores_them() {
    if skip_reason(BrokerKind::Redis).is_some() {
        return;
    }
    let b = private(BrokerKind::Redis).unwrap();
    let port = b.port(Endpoint::Redis).unwrap();
    b.pause().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 16];
    assert!(s.read(&mut buf).is_err(), "a paused broker does not answer");
    b.resume().unwrap();
    assert!(eventually(Duration::from_secs(5), || b.answers(Endpoint::Redis)));
}

#[test]
fn the_shared_broker_is_started_once() {
    if skip_reason(BrokerKind::Nats).is_some() {
        return;
    }
    let a = shared(BrokerKind::Nats).unwrap();
    let b = shared(BrokerKind::Nats).unwrap();
    assert_eq!(a.url(Endpoint::Nats), b.url(Endpoint::Nats));
    assert!(a
        .url(Endpoint::Nats)
        .unwrap()
        .starts_with("nats://127.0.0.1:"));
}

/// Run only as a child of `a_killed_test_process_leaves_no_broker_behind`.
#[test]
fn child_starts_brokers_and_waits_to_be_killed() {
    if std::env::var("POLYBRIDGE_TESTKIT_CHILD").is_err() {
        return;
    }
    let shared_nats = shared(BrokerKind::Nats).unwrap();
    let own = private(BrokerKind::Redis).unwrap();
    let nats_port: u16 = shared_nats
        .url(Endpoint::Nats)
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    println!(
        "READY {} {} {} {}",
        own.pids()
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        own.port(Endpoint::Redis).unwrap(),
        nats_port,
        own.dir().display()
    );
    std::io::stdout().flush().unwrap();
    // Bounded: the parent kills us long before this ends.
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_test_process_leaves_no_broker_behind() {
    if skip_reason(BrokerKind::Redis).is_some() || skip_reason(BrokerKind::Nats).is_some() {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_starts_brokers_and_waits_to_be_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("POLYBRIDGE_TESTKIT_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.find("READY ").map(|i| l[i..].to_owned()))
        .expect("the child reports its brokers");
    let parts: Vec<&str> = line.split_whitespace().collect();
    let pids: Vec<u32> = parts[1].split(',').map(|p| p.parse().unwrap()).collect();
    let (redis_port, nats_port): (u16, u16) =
        (parts[2].parse().unwrap(), parts[3].parse().unwrap());
    let dir = std::path::PathBuf::from(parts[4]);
    assert!(connects(redis_port) && connects(nats_port));
    child.kill().unwrap(); // SIGKILL: no destructor runs in the child
    child.wait().unwrap();
    assert!(
        BrokerProcess::wait_gone(&pids, Duration::from_secs(10)),
        "broker processes survived their test process"
    );
    assert!(
        eventually(Duration::from_secs(10), || !connects(redis_port)
            && !connects(nats_port)),
        "ports still open"
    );
    assert!(
        eventually(Duration::from_secs(10), || !dir.exists()),
        "data directory left behind"
    );
}

/// Tansu behind `socat`'s TLS listener: both run in the broker's process group, so both go
/// when the broker is dropped, and the TLS port closes with the plain one.
#[test]
fn kafka_tls_listener_goes_with_the_broker() {
    if let Some(reason) = skip_reason(BrokerKind::Kafka) {
        eprintln!("{reason}");
        return;
    }
    if polybridge_testkit::kafka_home().is_some() {
        eprintln!("KAFKA_HOME is set: no TLS variant of Apache Kafka");
        return;
    }
    let b = polybridge_testkit::private_tls(BrokerKind::Kafka).expect("TLS broker starts");
    let plain = b.port(Endpoint::Kafka).unwrap();
    let url = b.tls_url(Endpoint::Kafka).unwrap();
    let tls: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(b.answers(Endpoint::Kafka));
    assert!(connects(tls), "{url} listens");
    let pids = b.pids();
    assert!(pids.len() >= 2, "tansu and socat: {pids:?}");
    drop(b);
    assert!(
        BrokerProcess::wait_gone(&pids, Duration::from_secs(10)),
        "processes left after drop: {pids:?}"
    );
    for p in [plain, tls] {
        assert!(
            eventually(Duration::from_secs(10), || !connects(p)),
            "port {p} still open"
        );
    }
}

#[test]
fn test_certificates_are_pem_files_in_a_directory_of_their_own() {
    let (files, dir) = polybridge_testkit::test_certificates().unwrap();
    for path in [
        &files.ca,
        &files.server_cert,
        &files.client_cert,
        &files.other_ca,
    ] {
        assert!(path.starts_with(dir.path()), "{}", path.display());
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.starts_with("-----BEGIN CERTIFICATE-----"),
            "{}",
            path.display()
        );
    }
    for path in [&files.server_key, &files.client_key] {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{}",
            path.display()
        );
    }
    let root = dir.path().to_owned();
    drop(dir);
    assert!(!root.exists());
}

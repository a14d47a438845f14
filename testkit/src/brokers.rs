//! How each broker is configured, started, probed and stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::probe;
use crate::process::{alive, free_port, Group};
use crate::tls::{self, TlsFiles};
use crate::{BrokerKind, Endpoint, HarnessError, TlsUrls};

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const ACTIVEMQ_JAR: &str = "/usr/share/activemq/bin/activemq.jar";

/// A broker started by the harness: its process group, ports and data directory.
#[derive(Debug)]
pub struct BrokerProcess {
    kind: BrokerKind,
    dir: tempfile::TempDir,
    ports: BTreeMap<Endpoint, u16>,
    /// RabbitMQ only: Erlang distribution and epmd ports, and the node name.
    dist_port: u16,
    epmd_port: u16,
    node: String,
    group: Option<Group>,
    starts: u32,
    /// TLS brokers ([`BrokerProcess::start_tls`]): certificates and TLS listener ports.
    tls: Option<TlsFiles>,
    tls_ports: BTreeMap<Endpoint, u16>,
    /// Kafka (Tansu) only: SASL authentication required ([`BrokerProcess::start_sasl`]).
    sasl: bool,
}

impl BrokerProcess {
    /// Starts a broker of `kind` on free loopback ports with a new data directory and waits
    /// until it answers its protocol.
    pub fn start(kind: BrokerKind) -> Result<BrokerProcess, HarnessError> {
        Self::start_with(kind, false)
    }

    /// Like [`BrokerProcess::start`], with TLS listeners too, using certificates generated
    /// into the data directory ([`BrokerProcess::tls_files`]). Clients must present a
    /// certificate signed by the test CA where the broker can require one (mutual TLS):
    /// Redis, Mosquitto, NATS, RabbitMQ and ActiveMQ (a `stomp+ssl` connector with
    /// `needClientAuth=true`, its key and trust stores PKCS#12 files made from the PEM
    /// files by `openssl` and `keytool`). NATS serves TLS only (its one port); the others
    /// keep their plain listener too (for probes) and add a TLS one
    /// ([`BrokerProcess::tls_url`]).
    ///
    /// Kafka (Tansu): Tansu 0.6.0 has no usable TLS listener (its `--cert` and `--key`
    /// options exclude each other, and it builds its TLS settings only when both are
    /// given), so the TLS listener is `socat`'s OpenSSL listener in front of Tansu's plain
    /// one, requiring a client certificate signed by the test CA. Tansu advertises the TLS
    /// port, so clients must use [`BrokerProcess::tls_url`]; the plain port serves only
    /// the readiness probe. Not with `KAFKA_HOME` (Apache Kafka).
    pub fn start_tls(kind: BrokerKind) -> Result<BrokerProcess, HarnessError> {
        if kind == BrokerKind::Kafka && kafka_home().is_some() {
            return Err(HarnessError::Io {
                broker: kind.name(),
                what: "a TLS listener".into(),
                source: std::io::Error::other("no TLS variant of this broker in the harness"),
            });
        }
        Self::start_with(kind, true)
    }

    /// Kafka only: Tansu requiring SASL authentication (`--authentication`, SCRAM-SHA-256
    /// and SCRAM-SHA-512; it offers no PLAIN) on its plain listener.
    ///
    /// This broker has no user, and none can be added: Tansu keeps users in its storage,
    /// which is memory only in the installed build, and it accepts the request that adds
    /// one (`AlterUserScramCredentials`, what `tansu user create` sends) only on a
    /// connection that has already authenticated. Every login is refused, so it serves to
    /// test how clients report a refused login. Not with `KAFKA_HOME` (Apache Kafka).
    pub fn start_sasl(kind: BrokerKind) -> Result<BrokerProcess, HarnessError> {
        if kind != BrokerKind::Kafka || kafka_home().is_some() {
            return Err(HarnessError::Io {
                broker: kind.name(),
                what: "a SASL listener".into(),
                source: std::io::Error::other("only Tansu has a SASL variant in the harness"),
            });
        }
        Self::start_inner(kind, false, true)
    }

    fn start_with(kind: BrokerKind, tls: bool) -> Result<BrokerProcess, HarnessError> {
        Self::start_inner(kind, tls, false)
    }

    fn start_inner(kind: BrokerKind, tls: bool, sasl: bool) -> Result<BrokerProcess, HarnessError> {
        check_installed(kind, tls)?;
        if tls && kind == BrokerKind::Kafka && !on_path("socat") {
            return Err(HarnessError::NotInstalled {
                broker: kind.name(),
                program: "socat (the TLS listener in front of Tansu)".into(),
            });
        }
        let name = kind.name();
        let parent = crate::broker_dir();
        let dir = tempfile::Builder::new()
            .prefix(&format!("polybridge-{name}-"))
            .tempdir_in(&parent)
            .map_err(|source| HarnessError::Io {
                broker: name,
                what: format!("creating its data directory in {}", parent.display()),
                source,
            })?;
        let mut ports = BTreeMap::new();
        for e in kind.endpoints() {
            ports.insert(*e, free_port(name)?);
        }
        static NODES: AtomicU32 = AtomicU32::new(0);
        let mut broker = BrokerProcess {
            kind,
            dir,
            ports,
            dist_port: free_port(name)?,
            epmd_port: free_port(name)?,
            node: format!(
                "pb{}x{}@localhost",
                std::process::id(),
                NODES.fetch_add(1, Ordering::Relaxed)
            ),
            group: None,
            starts: 0,
            tls: None,
            tls_ports: BTreeMap::new(),
            sasl,
        };
        if tls {
            broker.tls = Some(tls::generate(broker.dir.path())?);
            for e in kind.endpoints() {
                let port = if kind == BrokerKind::Nats {
                    broker.ports[e]
                } else {
                    free_port(name)?
                };
                broker.tls_ports.insert(*e, port);
            }
        }
        broker.write_config()?;
        broker.launch()?;
        Ok(broker)
    }

    /// The broker kind.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// The port of `endpoint`.
    pub fn port(&self, endpoint: Endpoint) -> Option<u16> {
        self.ports.get(&endpoint).copied()
    }

    /// The URL of `endpoint`, e.g. `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self, endpoint: Endpoint) -> Option<String> {
        let port = self.port(endpoint)?;
        Some(match endpoint {
            Endpoint::Redis => format!("redis://127.0.0.1:{port}"),
            Endpoint::Mqtt => format!("mqtt://127.0.0.1:{port}"),
            Endpoint::Nats => format!("nats://127.0.0.1:{port}"),
            Endpoint::Amqp => format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            Endpoint::Stomp => format!("stomp://guest:guest@127.0.0.1:{port}"),
            Endpoint::Kafka => format!("kafka://127.0.0.1:{port}"),
        })
    }

    /// The certificates of a TLS broker ([`BrokerProcess::start_tls`]).
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The TLS URL of `endpoint` on a TLS broker, without certificate options, e.g.
    /// `rediss://127.0.0.1:PORT`, `mqtts://…`, `tls://…` (NATS), `amqps://guest:guest@…/%2f`,
    /// `stomp+ssl://guest:guest@…`, `kafkas://…`.
    pub fn tls_url(&self, endpoint: Endpoint) -> Option<String> {
        let port = *self.tls_ports.get(&endpoint)?;
        Some(match endpoint {
            Endpoint::Redis => format!("rediss://127.0.0.1:{port}"),
            Endpoint::Mqtt => format!("mqtts://127.0.0.1:{port}"),
            Endpoint::Nats => format!("tls://127.0.0.1:{port}"),
            Endpoint::Amqp => format!("amqps://guest:guest@127.0.0.1:{port}/%2f"),
            Endpoint::Stomp => format!("stomp+ssl://guest:guest@127.0.0.1:{port}"),
            Endpoint::Kafka => format!("kafkas://127.0.0.1:{port}"),
        })
    }

    /// The client URLs of the shared TLS checks ([`TlsUrls`]) for `endpoint` on a TLS
    /// broker: TLS on its TLS port (NATS: `nats://…?tls=true`), `extra` options on every URL
    /// that must be refused, and plain text to the TLS port (`redis://`, `mqtt://`,
    /// `nats://`, `amqp://`, `stomp://`) as one of them.
    pub fn tls_urls(&self, endpoint: Endpoint, extra: &str) -> Option<TlsUrls> {
        let files = self.tls.as_ref()?;
        let port = *self.tls_ports.get(&endpoint)?;
        let (base, plain) = match endpoint {
            Endpoint::Nats => {
                let plain = format!("nats://127.0.0.1:{port}");
                (format!("{plain}?tls=true"), plain)
            }
            Endpoint::Redis => (self.tls_url(endpoint)?, format!("redis://127.0.0.1:{port}")),
            Endpoint::Mqtt => (self.tls_url(endpoint)?, format!("mqtt://127.0.0.1:{port}")),
            Endpoint::Amqp => (
                self.tls_url(endpoint)?,
                format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            ),
            Endpoint::Stomp => (
                self.tls_url(endpoint)?,
                format!("stomp://guest:guest@127.0.0.1:{port}"),
            ),
            Endpoint::Kafka => return None,
        };
        Some(TlsUrls::new(&base, files, extra, Some(&plain)))
    }

    /// Whether `endpoint` answers its protocol's hello right now.
    pub fn answers(&self, endpoint: Endpoint) -> bool {
        self.port(endpoint)
            .is_some_and(|p| probe::ready(endpoint, p))
    }

    /// RabbitMQ's private `epmd` port (each instance runs its own), for cleanup checks.
    pub fn epmd_port(&self) -> Option<u16> {
        (self.kind == BrokerKind::RabbitMq).then_some(self.epmd_port)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Live pids of the broker's process group.
    pub fn pids(&self) -> Vec<u32> {
        self.group.as_ref().map(Group::pids).unwrap_or_default()
    }

    /// Whether the broker is running.
    pub fn is_running(&mut self) -> bool {
        self.group.as_mut().is_some_and(|g| !g.exited())
    }

    /// Stops the broker gracefully (it may persist its state), killing it if it does not
    /// stop within 30 s.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        let Some(mut group) = self.group.take() else {
            return Ok(());
        };
        group.signal("CONT");
        if self.kind == BrokerKind::RabbitMq {
            let mut ctl = Command::new(RABBITMQCTL);
            let _ = self
                .rabbitmq_env(&mut ctl)
                .args(["-n", &self.node, "stop"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        } else {
            group.signal("TERM");
        }
        group.wait_exit(Duration::from_secs(30));
        group.kill();
        self.after_exit();
        Ok(())
    }

    /// Kills the broker at once (SIGKILL to its process group), as a crash would.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        if let Some(mut group) = self.group.take() {
            group.kill();
            self.after_exit();
        }
        Ok(())
    }

    /// Stops (if running) and starts again on the same ports with the same data.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start_again()
    }

    /// Starts a stopped broker again on the same ports with the same data (what is in
    /// [`BrokerProcess::dir`] then: a test may change it in between). Does nothing when it
    /// is running.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Ok(());
        }
        self.launch()
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is answered.
    /// Returns once every thread of the broker has stopped.
    pub fn pause(&self) -> Result<(), HarnessError> {
        if let Some(g) = &self.group {
            g.signal("STOP");
            crate::process::wait_stopped(g.pgid(), Duration::from_secs(5));
        }
        Ok(())
    }

    /// Unfreezes a paused broker (SIGCONT).
    pub fn resume(&self) -> Result<(), HarnessError> {
        if let Some(g) = &self.group {
            g.signal("CONT");
        }
        Ok(())
    }

    /// Waits until every pid in `pids` is gone, up to `timeout`.
    pub fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if pids.iter().all(|p| !alive(*p)) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn io(&self, what: &str) -> impl FnOnce(std::io::Error) -> HarnessError {
        let broker = self.kind.name();
        let what = what.to_owned();
        move |source| HarnessError::Io {
            broker,
            what,
            source,
        }
    }

    fn write(&self, name: &str, text: &str) -> Result<(), HarnessError> {
        std::fs::write(self.path(name), text).map_err(self.io(&format!("writing {name}")))
    }

    fn write_config(&self) -> Result<(), HarnessError> {
        let dir = self.dir.path().display().to_string();
        match self.kind {
            BrokerKind::Mosquitto => {
                let mut conf = format!(
                    "listener {port} 127.0.0.1\nuser root\nallow_anonymous true\npersistence true\npersistence_location {dir}/\nautosave_interval 1\nmax_queued_messages 100000\nmax_inflight_messages 1000\nlog_dest file {dir}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type notice\n",
                    port = self.ports[&Endpoint::Mqtt]
                );
                if let (Some(t), Some(port)) = (&self.tls, self.tls_ports.get(&Endpoint::Mqtt)) {
                    conf.push_str(&format!(
                        "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                        t.ca.display(),
                        t.server_cert.display(),
                        t.server_key.display()
                    ));
                }
                self.write("mosquitto.conf", &conf)
            }
            BrokerKind::RabbitMq => {
                for d in ["mnesia", "log"] {
                    std::fs::create_dir_all(self.path(d))
                        .map_err(self.io("creating directories"))?;
                }
                self.write("enabled_plugins", "[rabbitmq_stomp,rabbitmq_mqtt].\n")?;
                // `queue_index_embed_msgs_below = 8192`: persistent messages under 8 KiB (the
                // body with its properties) stay in their queue's index, as those under
                // 4 KiB do by default. Above the default threshold they went to the shared
                // message store, which held publisher confirms and deliveries 15-100 ms about
                // once every two seconds at 1k msg/s of 4 KiB messages, raw clients and bridge
                // alike (docs/benchmarks, "RabbitMQ 4 KiB: the message store's stalls").
                let mut conf = format!(
                    "listeners.tcp.1 = 127.0.0.1:{}\nstomp.listeners.tcp.1 = 127.0.0.1:{}\nmqtt.listeners.tcp.1 = 127.0.0.1:{}\nmqtt.prefetch = 1000\nqueue_index_embed_msgs_below = 8192\nlog.console = false\nlog.file.level = warning\n",
                    self.ports[&Endpoint::Amqp], self.ports[&Endpoint::Stomp], self.ports[&Endpoint::Mqtt]
                );
                if let Some(t) = &self.tls {
                    conf.push_str(&format!(
                        "listeners.ssl.1 = 127.0.0.1:{}\nstomp.listeners.ssl.1 = 127.0.0.1:{}\nmqtt.listeners.ssl.1 = 127.0.0.1:{}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
                        self.tls_ports[&Endpoint::Amqp],
                        self.tls_ports[&Endpoint::Stomp],
                        self.tls_ports[&Endpoint::Mqtt],
                        t.ca.display(),
                        t.server_cert.display(),
                        t.server_key.display()
                    ));
                }
                self.write("rabbitmq.conf", &conf)?;
                let cookie = self.path(".erlang.cookie");
                std::fs::write(&cookie, format!("POLYBRIDGE{}", std::process::id()))
                    .map_err(self.io("writing the Erlang cookie"))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o600))
                    .map_err(self.io("protecting the Erlang cookie"))
            }
            BrokerKind::ActiveMq => {
                for d in ["conf", "data", "tmp"] {
                    std::fs::create_dir_all(self.path(d))
                        .map_err(self.io("creating directories"))?;
                }
                let mut ssl_context = String::new();
                let mut ssl_connector = String::new();
                if let (Some(t), Some(port)) = (&self.tls, self.tls_ports.get(&Endpoint::Stomp)) {
                    let (keystore, truststore) = tls::java_stores(t, self.dir.path())?;
                    let pass = tls::JAVA_STORE_PASSWORD;
                    ssl_context = format!(
                        r#"    <sslContext><sslContext keyStore="file:{}" keyStorePassword="{pass}" keyStoreType="pkcs12" trustStore="file:{}" trustStorePassword="{pass}" trustStoreType="pkcs12"/></sslContext>
"#,
                        keystore.display(),
                        truststore.display()
                    );
                    ssl_connector = format!(
                        r#"      <transportConnector name="stomp+ssl" uri="stomp+ssl://127.0.0.1:{port}?needClientAuth=true&amp;transport.closeAsync=false"/>
"#
                    );
                }
                self.write(
                    "conf/activemq.xml",
                    &format!(
                        r#"<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
       http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="polybridge-test" useJmx="false" persistent="true" dataDirectory="{dir}/data" schedulerSupport="false">
    <!-- Producer flow control off for queues: persistent messages are in the store anyway,
         and once queues nobody consumes (benchmark runs) fill the memory limit ActiveMQ
         otherwise blocks every SEND without an error (a 4 KiB publish run stalled for
         30 s, the broker idle). Memory 64 MB (default: 70% of the 256 MB heap), so the
         cursors' cache stays far from the heap limit; the rest is read from the store.
         (Children of <broker> in alphabetical order, as ActiveMQ's schema wants.) -->
    <destinationPolicy><policyMap><policyEntries>
      <policyEntry queue=">" producerFlowControl="false"/>
    </policyEntries></policyMap></destinationPolicy>
    <!-- KahaDB's journal cleanup every 5 min instead of every 30 s: a cleanup stopped the
         broker from reading its publishers' SENDs for 144-174 ms, which hit one latency
         series in most benchmark runs (docs/benchmarks, "RabbitMQ→STOMP(ActiveMQ) 4 KiB:
         the round of ~100 ms"). The journal's files go with the run's temporary
         directory. -->
    <persistenceAdapter><kahaDB directory="{dir}/data/kahadb" cleanupInterval="300000"/></persistenceAdapter>
{ssl_context}    <systemUsage><systemUsage><memoryUsage><memoryUsage limit="64 mb"/></memoryUsage></systemUsage></systemUsage>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{port}?transport.closeAsync=false"/>
{ssl_connector}    </transportConnectors>
  </broker>
</beans>
"#,
                        port = self.ports[&Endpoint::Stomp]
                    ),
                )
            }
            BrokerKind::Kafka => match kafka_home() {
                Some(home) => self.write_kafka_config(&home),
                None => Ok(()),
            },
            BrokerKind::Redis | BrokerKind::Nats => Ok(()),
        }
    }

    /// Apache Kafka in KRaft mode, one node that is broker and controller (the controller
    /// listens on the spare `dist_port`), storage formatted once per data directory.
    fn write_kafka_config(&self, home: &Path) -> Result<(), HarnessError> {
        let dir = self.dir.path().display().to_string();
        let port = self.ports[&Endpoint::Kafka];
        let controller = self.dist_port;
        self.write(
            "server.properties",
            &format!(
                "process.roles=broker,controller\nnode.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 log.dirs={dir}/kafka-logs\nnum.partitions=4\nauto.create.topics.enable=true\n\
                 offsets.topic.replication.factor=1\noffsets.topic.num.partitions=4\n\
                 transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n"
            ),
        )?;
        let status = Command::new(home.join("bin/kafka-storage.sh"))
            .args([
                "format",
                "--ignore-formatted",
                "-t",
                "cG9seWJyaWRnZS10ZXN0cw",
                "-c",
            ])
            .arg(self.path("server.properties"))
            .env("LOG_DIR", self.path("logs"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(self.io("formatting Kafka's storage (kafka-storage.sh format)"))?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Io {
                broker: "kafka",
                what: "formatting Kafka's storage (kafka-storage.sh format)".into(),
                source: std::io::Error::other(format!("exit status {status}")),
            })
        }
    }

    fn rabbitmq_env<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        let dir = self.dir.path();
        command
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            // Lets `epmd -kill` stop this instance's epmd even while the node it served is
            // still registered (right after a SIGKILL).
            .env("ERL_EPMD_RELAXED_COMMAND_CHECK", "1")
            .current_dir(dir)
    }

    fn command(&self) -> Command {
        let dir = self.dir.path().display().to_string();
        match self.kind {
            BrokerKind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--port",
                    &self.ports[&Endpoint::Redis].to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    &dir,
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--protected-mode",
                    "no",
                    "--daemonize",
                    "no",
                ]);
                if let (Some(t), Some(port)) = (&self.tls, self.tls_ports.get(&Endpoint::Redis)) {
                    c.arg("--tls-port")
                        .arg(port.to_string())
                        .arg("--tls-cert-file")
                        .arg(&t.server_cert)
                        .arg("--tls-key-file")
                        .arg(&t.server_key)
                        .arg("--tls-ca-cert-file")
                        .arg(&t.ca)
                        .args(["--tls-auth-clients", "yes"]);
                }
                c
            }
            BrokerKind::Mosquitto => {
                let mut c = Command::new("mosquitto");
                c.arg("-c").arg(self.path("mosquitto.conf"));
                c
            }
            BrokerKind::Nats => {
                let mut c = Command::new("nats-server");
                c.args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.ports[&Endpoint::Nats].to_string(),
                    "-js",
                    "-sd",
                    &format!("{dir}/jetstream"),
                ]);
                if let Some(t) = &self.tls {
                    c.arg("--tlsverify")
                        .arg("--tlscert")
                        .arg(&t.server_cert)
                        .arg("--tlskey")
                        .arg(&t.server_key)
                        .arg("--tlscacert")
                        .arg(&t.ca);
                }
                c
            }
            BrokerKind::RabbitMq => {
                let mut c = Command::new(RABBITMQ_SERVER);
                self.rabbitmq_env(&mut c);
                c
            }
            BrokerKind::ActiveMq => {
                let mut c = Command::new("java");
                c.args(["-Xms64m", "-Xmx256m", "-Dactivemq.home=/usr/share/activemq"])
                    .arg(format!("-Dactivemq.base={dir}"))
                    .arg(format!("-Dactivemq.conf={dir}/conf"))
                    .arg(format!("-Dactivemq.data={dir}/data"))
                    .arg(format!("-Djava.io.tmpdir={dir}/tmp"))
                    .args(["-jar", ACTIVEMQ_JAR, "start"])
                    .arg(format!("xbean:file:{dir}/conf/activemq.xml"))
                    .current_dir(self.dir.path());
                c
            }
            BrokerKind::Kafka if kafka_home().is_some() => {
                let home = kafka_home().unwrap_or_default();
                let mut c = Command::new(home.join("bin/kafka-server-start.sh"));
                c.arg(self.path("server.properties"))
                    .env("LOG_DIR", self.path("logs"))
                    .env("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m");
                c
            }
            BrokerKind::Kafka => {
                let port = self.ports[&Endpoint::Kafka];
                let tls_port = self.tls_ports.get(&Endpoint::Kafka).copied();
                let advertised = tls_port.unwrap_or(port);
                let mut c = Command::new(tansu_bin());
                c.args([
                    "broker",
                    "--listener-url",
                    &format!("tcp://127.0.0.1:{port}"),
                    "--advertised-listener-url",
                    &format!("tcp://127.0.0.1:{advertised}"),
                    "--storage-engine",
                    "memory://tansu/",
                ]);
                if self.sasl {
                    c.arg("--authentication");
                }
                match (&self.tls, tls_port) {
                    (Some(t), Some(tls_port)) => {
                        // `socat` in the broker's process group (stopped and killed with
                        // it), then Tansu in place of the shell.
                        let mut sh = Command::new("sh");
                        sh.arg("-c")
                            .arg(r#"socat "$1" "$2" & shift 2; exec "$@""#)
                            .arg("sh")
                            .arg(format!(
                                "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
                                t.server_cert.display(),
                                t.server_key.display(),
                                t.ca.display()
                            ))
                            .arg(format!("TCP:127.0.0.1:{port}"))
                            .arg(c.get_program())
                            .args(c.get_args());
                        sh
                    }
                    _ => c,
                }
            }
        }
    }

    fn ready_timeout(&self) -> Duration {
        Duration::from_secs(match self.kind {
            BrokerKind::RabbitMq => 120,
            BrokerKind::ActiveMq => 90,
            BrokerKind::Kafka if kafka_home().is_some() => 90,
            _ => 30,
        })
    }

    /// Starts the process and waits until every endpoint answers.
    fn launch(&mut self) -> Result<(), HarnessError> {
        let log = self.path("broker.log");
        let dir = self.dir.path().display().to_string();
        let mut cleanup = format!("rm -rf '{dir}'");
        if self.kind == BrokerKind::RabbitMq {
            cleanup = format!(
                "ERL_EPMD_RELAXED_COMMAND_CHECK=1 epmd -port {} -kill >/dev/null 2>&1; {cleanup}",
                self.epmd_port
            );
        }
        let group = Group::spawn(self.kind.name(), self.command(), &log, &cleanup)?;
        self.group = Some(group);
        self.starts += 1;
        let started = Instant::now();
        let timeout = self.ready_timeout();
        let mut endpoints: Vec<(Endpoint, u16, bool)> =
            self.ports.iter().map(|(e, p)| (*e, *p, false)).collect();
        endpoints.extend(self.tls_ports.iter().map(|(e, p)| (*e, *p, true)));
        if self.kind == BrokerKind::Nats && self.tls.is_some() {
            endpoints.retain(|(_, _, tls)| *tls);
        }
        for (endpoint, port, tls) in endpoints {
            loop {
                let ready = if tls {
                    probe::listening(endpoint, port)
                } else {
                    probe::ready(endpoint, port)
                };
                if ready {
                    break;
                }
                let exited = self.group.as_mut().is_none_or(|g| g.exited());
                if exited || started.elapsed() > timeout {
                    let tail = log_tail(&log);
                    self.kill()?;
                    return Err(HarnessError::NotReady {
                        broker: self.kind.name(),
                        port,
                        seconds: timeout.as_secs(),
                        log: tail,
                    });
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        Ok(())
    }

    /// RabbitMQ's epmd daemonises outside the process group: stop it until its port closes.
    fn after_exit(&self) {
        if self.kind != BrokerKind::RabbitMq {
            return;
        }
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.epmd_port)).is_ok()
            && Instant::now() < end
        {
            let _ = Command::new("epmd")
                .args(["-port", &self.epmd_port.to_string(), "-kill"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The Apache Kafka distribution to test against instead of Tansu: `KAFKA_HOME`, when it
/// holds `bin/kafka-server-start.sh`.
pub fn kafka_home() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("KAFKA_HOME")?);
    home.join("bin/kafka-server-start.sh")
        .is_file()
        .then_some(home)
}

fn tansu_bin() -> String {
    std::env::var("POLYBRIDGE_TANSU_BIN").unwrap_or_else(|_| "tansu".into())
}

fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

fn check_installed(kind: BrokerKind, tls: bool) -> Result<(), HarnessError> {
    let needed: Vec<String> = match kind {
        BrokerKind::Redis => vec!["redis-server".into()],
        BrokerKind::Mosquitto => vec!["mosquitto".into()],
        BrokerKind::Nats => vec!["nats-server".into()],
        BrokerKind::RabbitMq => vec![RABBITMQ_SERVER.into(), RABBITMQCTL.into(), "epmd".into()],
        BrokerKind::ActiveMq if tls => vec![
            "java".into(),
            ACTIVEMQ_JAR.into(),
            "keytool".into(),
            "openssl".into(),
        ],
        BrokerKind::ActiveMq => vec!["java".into(), ACTIVEMQ_JAR.into()],
        BrokerKind::Kafka => match kafka_home() {
            Some(home) => vec![
                home.join("bin/kafka-server-start.sh").display().to_string(),
                home.join("bin/kafka-storage.sh").display().to_string(),
            ],
            None => vec![tansu_bin()],
        },
    };
    match needed.into_iter().find(|p| !on_path(p)) {
        Some(program) => Err(HarnessError::NotInstalled {
            broker: kind.name(),
            program,
        }),
        None => Ok(()),
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

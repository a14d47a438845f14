//! One program, any broker: the same code publishes and subscribes on whichever broker the
//! URL names. Only the URL changes:
//!
//! ```text
//! cargo run -p polybridge --example any_broker                                   # memory://any-broker
//! cargo run -p polybridge --example any_broker -- nats://127.0.0.1:4222
//! cargo run -p polybridge --example any_broker -- mqtt://127.0.0.1:1883
//! cargo run -p polybridge --example any_broker -- amqp://guest:guest@127.0.0.1:5672/%2f
//! cargo run -p polybridge --example any_broker -- stomp://admin:admin@127.0.0.1:61613
//! cargo run -p polybridge --example any_broker -- redis://127.0.0.1:6379
//! ```
//!
//! It subscribes to the pattern `greetings.*` (polybridge's canonical form, which each
//! adapter converts to its broker's syntax: `greetings/+` on MQTT, a `greetings.*` binding
//! on RabbitMQ, …), publishes three greetings, each confirmed by the broker, and acks the
//! three deliveries. Concrete topics are levels joined with the broker's separator (`/` on
//! MQTT, `.` elsewhere): [`topic`] is the only place that knows.
//!
//! Exit status 0 when all three greetings came back; an error naming the broker otherwise.

use std::time::Duration;

use polybridge::{Broker, Deadline, HeaderSupport, Message, Subscription};

const GREETINGS: [(&str, &str); 3] = [
    ("en", "Hello, World!"),
    ("vi", "Xin chào thế giới!"),
    ("fr", "Bonjour le monde !"),
];

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

/// A concrete topic from its levels, in the broker's own form.
fn topic(broker: &dyn Broker, levels: &[&str]) -> String {
    let separator = if broker.name() == "mqtt" { "/" } else { "." };
    levels.join(separator)
}

#[tokio::main]
async fn main() -> polybridge::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://any-broker".into());
    let broker = polybridge::connect(&url).await?;
    println!("connected to {} ({})", broker.url(), broker.name());
    let headers = broker.capabilities().headers != HeaderSupport::None;

    // Subscribe first: on most brokers a subscription sees only what is published after it.
    let mut greetings = broker
        .subscribe(Subscription::new("greetings.*".parse()?))
        .await?;

    for (lang, text) in GREETINGS {
        let topic = topic(broker.as_ref(), &["greetings", lang]);
        broker
            .publish(
                &topic,
                &Message::new(text).with_header("lang", lang),
                deadline(),
            )
            .await?; // resolves once the broker confirmed it
        println!("published  {topic}: {text}");
    }

    let mut received = 0;
    while received < GREETINGS.len() {
        let delivery = match tokio::time::timeout(Duration::from_secs(10), greetings.next()).await {
            Ok(Some(delivery)) => delivery?,
            Ok(None) => return Err(polybridge::Error::closed(broker.name(), "greetings.*")),
            Err(_) => {
                return Err(polybridge::Error::transient(
                    broker.name(),
                    "greetings.*",
                    format!(
                        "{received} of {} greetings arrived within 10 s",
                        GREETINGS.len()
                    ),
                ))
            }
        };
        let lang = if headers {
            delivery.message.headers.get_str("lang").unwrap_or("?")
        } else {
            "(this broker carries no headers)"
        };
        println!(
            "received   {}: {} (lang {lang})",
            delivery.info.topic,
            String::from_utf8_lossy(&delivery.message.payload),
        );
        delivery.ack()?; // the broker forgets the message only now
        received += 1;
    }

    greetings.close().await;
    broker.close(deadline()).await?;
    println!(
        "done: {} published, {received} received on {}",
        GREETINGS.len(),
        broker.name()
    );
    Ok(())
}

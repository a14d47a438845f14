//! The polybridge quickstart: one program, any broker. Runs on the in-memory broker with no
//! broker installed; pass a URL to run the same code elsewhere:
//!
//! ```text
//! cargo run --example quickstart                      # memory://quickstart
//! cargo run --example quickstart -- memory://other
//! ```
//!
//! It shows the whole contract: confirmed publish, wildcard subscription, a consumer group
//! shared by two workers, nack with redelivery, and reject to a dead-letter topic.

use std::time::Duration;

use polybridge::{Deadline, Delivery, Message, Subscription};

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

async fn next(stream: &mut polybridge::DeliveryStream) -> polybridge::Result<Delivery> {
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => Err(polybridge::Error::closed("quickstart", "the subscription")),
        Err(_) => Err(polybridge::Error::transient(
            "quickstart",
            "orders",
            "nothing arrived in 5 s",
        )),
    }
}

#[tokio::main]
async fn main() -> polybridge::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://quickstart".into());
    let broker = polybridge::connect(&url).await?;
    println!("connected to {} ({})", broker.url(), broker.name());

    // Two workers share the consumer group "billing"; a private subscriber sees everything.
    let orders = Subscription::new("orders.*".parse()?).dead_letter("orders-dead");
    let mut worker_a = broker.subscribe(orders.clone().group("billing")).await?;
    let mut worker_b = broker.subscribe(orders.clone().group("billing")).await?;
    let mut audit = broker.subscribe(orders).await?;
    let mut dead = broker
        .subscribe(Subscription::new("orders-dead".parse()?))
        .await?;

    for (topic, body) in [
        ("orders.created", r#"{"id":1,"total":12.5}"#),
        ("orders.created", r#"{"id":2,"total":99}"#),
        ("orders.cancelled", r#"{"id":1}"#),
        ("orders.created", "not json"),
    ] {
        let receipt = broker
            .publish(
                topic,
                &Message::new(body)
                    .with_content_type("application/json")
                    .with_header("source", "quickstart"),
                deadline(),
            )
            .await?;
        println!("published to {topic}: confirmed at {:?}", receipt.position);
    }

    for _ in 0..4 {
        let d = next(&mut audit).await?;
        println!(
            "audit   <- {} {}",
            d.info.topic,
            String::from_utf8_lossy(&d.message.payload)
        );
        d.ack()?;
    }

    // The group: whichever worker is free takes the next message. Bad JSON is rejected to
    // the dead-letter topic; the first good message is nacked once to show redelivery.
    let mut handled = 0;
    let mut nacked_once = false;
    while handled < 4 {
        let d = tokio::select! {
            d = next(&mut worker_a) => ("worker-a", d?),
            d = next(&mut worker_b) => ("worker-b", d?),
        };
        let (worker, d) = d;
        let body = String::from_utf8_lossy(&d.message.payload).into_owned();
        if !body.starts_with('{') {
            println!("{worker} <- {} {body}: not JSON, rejected", d.info.topic);
            d.reject("payload is not JSON")?;
            handled += 1;
        } else if !nacked_once {
            nacked_once = true;
            println!(
                "{worker} <- {} {body}: nacked, will come back",
                d.info.topic
            );
            d.nack()?;
        } else {
            println!(
                "{worker} <- {} {body} (attempt {}): acked",
                d.info.topic, d.info.attempt
            );
            d.ack()?;
            handled += 1;
        }
    }

    let d = next(&mut dead).await?;
    println!(
        "dead-letter <- {} reason={:?}",
        String::from_utf8_lossy(&d.message.payload),
        d.message
            .headers
            .get_str(polybridge::well_known::REJECT_REASON)
    );
    d.ack()?;
    println!("done: 4 published, 4 handled by the group, 1 dead-lettered");
    Ok(())
}

//! A web page watching a topic: this program serves a hub on 127.0.0.1:8090 (over an
//! in-memory broker) and publishes a price tick every second to `prices.eu`; open
//! `watch.html` (next to this file) in a browser to see them arrive, or publish from the
//! page. In a deployment the publisher is a bridge route such as
//! `kafka://…/prices → ws://0.0.0.0:8090/?serve=true`.
//!
//! Run: `cargo run -p polybridge-websocket --example watch`

use std::time::Duration;

use polybridge_core::{Deadline, Message, Publisher, Result, Subscriber, Subscription};
use polybridge_websocket::WsBroker;

#[tokio::main]
async fn main() -> Result<()> {
    let hub = WsBroker::connect(&"ws://127.0.0.1:8090/?serve=true".parse()?).await?;
    println!("hub on ws://127.0.0.1:8090/ — open adapters/websocket/examples/watch.html");
    // Print what pages publish to `chat.*`.
    let mut chat = hub.subscribe(Subscription::new("chat.*".parse()?)).await?;
    tokio::spawn(async move {
        while let Some(Ok(d)) = chat.next().await {
            println!(
                "{}: {}",
                d.info.topic,
                String::from_utf8_lossy(&d.message.payload)
            );
            let _ = d.ack();
        }
    });
    let mut price = 100.0_f64;
    for n in 0u64.. {
        price += ((n * 7919) % 11) as f64 / 10.0 - 0.5;
        let tick = format!("{{\"n\":{n},\"price\":{price:.2}}}");
        hub.publish(
            "prices.eu",
            &Message::new(tick).with_content_type("application/json"),
            Deadline::after(Duration::from_secs(5)),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

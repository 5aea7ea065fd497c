//! `herald stream info`: what every stream holds, as `nats stream ls` lists it.

use std::time::Duration;

use herald_core::broker::Admin;
use herald_core::policy::{Retention, human_bytes};

use crate::serve::AppError;

pub async fn info(url: &str, creds: Option<&str>) -> Result<(), AppError> {
    let client = herald_jetstream::connect_once(url, creds)
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    let broker = herald_jetstream::JetStream::new(client, Duration::from_secs(5), "HERALD");
    let list = broker
        .streams()
        .await
        .map_err(|e| AppError::Runtime(format!("cannot list streams: {e}")))?;
    if list.is_empty() {
        println!("no streams at {url}");
        return Ok(());
    }
    println!(
        "{:<16} {:>10} {:>12} {:>10} {:<10} {:>10}",
        "STREAM", "MESSAGES", "BYTES", "CONSUMERS", "RETENTION", "MAX BYTES"
    );
    for s in list {
        let max = if s.max_bytes < 0 {
            "unlimited".to_owned()
        } else {
            human_bytes(s.max_bytes as u64)
        };
        let retention = match s.retention {
            Retention::Interest => "interest",
            Retention::Limits => "limits",
        };
        println!(
            "{:<16} {:>10} {:>12} {:>10} {:<10} {:>10}",
            s.name,
            s.messages,
            human_bytes(s.bytes),
            s.consumers,
            retention,
            max
        );
    }
    Ok(())
}

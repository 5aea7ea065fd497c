//! `herald deadletter list|replay`: inspect the dead-letter stream and redrive chosen events,
//! oldest first, through [`herald_core::deadletter`] (what replay does is documented there). The
//! dead letter is deleted from the dead-letter stream only after the replay was stored (unless
//! `--keep`).

use std::time::Duration;

use herald_core::broker::Admin as _;
use herald_core::deadletter::{DeadLetter, Selection, list, replay};

use crate::serve::AppError;

#[derive(Debug, clap::Args, Default)]
pub struct DeadletterArgs {
    /// NATS server(s) [default: nats://127.0.0.1:4222]
    #[arg(long)]
    pub nats_url: Option<String>,
    /// NATS credentials file (user JWT and NKey seed) [default: none]
    #[arg(long)]
    pub nats_creds: Option<String>,
    /// Dead-letter stream [default: HERALD_DLQ]
    #[arg(long)]
    pub dlq_stream: Option<String>,
    /// Only dead letters of this app id
    #[arg(long)]
    pub app: Option<String>,
    /// Only dead letters of this event type
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// Only dead letters newer than this, e.g. 30m, 2h
    #[arg(long)]
    pub since: Option<String>,
    /// Only these dead-letter sequence numbers (comma-separated)
    #[arg(long)]
    pub seq: Option<String>,
    /// replay: keep the dead letters after replaying them
    #[arg(long)]
    pub keep: bool,
}

/// Prints dead letters as a table.
pub fn print(list: &[DeadLetter]) {
    if list.is_empty() {
        println!("no dead letters match");
        return;
    }
    println!(
        "{:>6} {:>8} {:<28} {:<24} {:<20} {:>6} {:>8}  REASON",
        "SEQ", "AGE", "SUBSCRIBER", "TYPE", "ID", "STATUS", "ATTEMPTS"
    );
    for d in list {
        println!(
            "{:>6} {:>8} {:<28} {:<24} {:<20} {:>6} {:>8}  {}",
            d.seq,
            human_age(d.age),
            d.subscriber,
            d.ty,
            d.id,
            d.status,
            d.attempts,
            d.reason
        );
    }
}

fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `herald deadletter list|replay`.
pub async fn run(
    command: super::DeadletterCommand,
    env: &dyn herald_core::settings::Env,
) -> Result<(), AppError> {
    use super::DeadletterCommand;
    use herald_core::settings::{Resolver, in_range, parse_creds, parse_stream_name};
    use herald_jetstream::parse_nats_url;
    let (args, replaying) = match command {
        DeadletterCommand::List(a) => (a, false),
        DeadletterCommand::Replay(a) => (a, true),
    };
    let mut r = Resolver::new(env);
    let url = r
        .get("nats-url", &args.nats_url, parse_nats_url)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let creds = r.get("nats-creds", &args.nats_creds, parse_creds);
    let stream = r
        .get("dlq-stream", &args.dlq_stream, parse_stream_name)
        .unwrap_or_else(|| herald_core::policy::DLQ_STREAM.into());
    let since = r.get(
        "since",
        &args.since,
        in_range(herald_core::limits::DEADLETTER_SINCE),
    );
    let seqs = r.get("seq", &args.seq, |v| {
        v.split(',')
            .map(|s| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("`{s}` is not a sequence number"))
            })
            .collect()
    });
    if replaying && args.app.is_none() && args.ty.is_none() && since.is_none() && seqs.is_none() {
        r.fail("replay needs a selection: --seq, --app, --type or --since (to replay everything, say --since 1000d)".into());
    }
    r.finish()?;
    let client = herald_jetstream::connect_once(&url, creds.as_deref())
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    let broker = herald_jetstream::JetStream::new(client, Duration::from_secs(5), "HERALD");
    let sel = Selection {
        app: args.app,
        ty: args.ty,
        since,
        seqs,
        consumers: None,
    };
    let failed = |e: herald_core::deadletter::DeadLetterError| AppError::Runtime(e.to_string());
    let mut found = list(&broker, &stream, &sel, None)
        .await
        .map_err(failed)?
        .found;
    found.reverse();
    if !replaying {
        print(&found);
        return Ok(());
    }
    let mut replayed = 0;
    for d in &found {
        replay(&broker, d).await.map_err(failed)?;
        if !args.keep {
            broker.delete_message(&stream, d.seq).await.map_err(|e| {
                AppError::Runtime(format!("replayed {} but could not delete it: {e}", d.seq))
            })?;
        }
        replayed += 1;
        println!(
            "replayed {} ({} {}) for {}",
            d.seq, d.ty, d.id, d.subscriber
        );
    }
    println!("{replayed} dead letter(s) replayed");
    Ok(())
}

//! The configuration bucket: a JetStream key-value bucket. It is made here rather than with
//! async-nats' `create_key_value`, which first asks for account information that async-nats
//! cannot parse from nats-server 2.9; the stream is the one `create_key_value` makes.

use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use herald_core::broker::{BoxFuture, BrokerError, ConfigStore, KeyWatch};

use crate::JetStream;

fn other(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Other(e.to_string())
}

impl JetStream {
    async fn bucket(&self, bucket: &str) -> Result<kv::Store, BrokerError> {
        // A bucket that cannot be got is, to herald, one that is not there (yet): the callers
        // retry later either way.
        self.js
            .get_key_value(bucket)
            .await
            .map_err(|e| match e.kind() {
                async_nats::jetstream::context::KeyValueErrorKind::GetBucket => {
                    BrokerError::NotFound(format!("bucket {bucket} ({e})"))
                }
                _ => other(format!("cannot open bucket {bucket}: {e}")),
            })
    }
}

impl ConfigStore for JetStream {
    fn ensure_bucket(
        &self,
        bucket: &str,
        replicas: usize,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let bucket = bucket.to_owned();
        Box::pin(async move {
            let fail =
                |e: &dyn std::fmt::Display| other(format!("cannot create bucket {bucket}: {e}"));
            let mut stream = self
                .js
                .get_or_create_stream(stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some(
                        "herald cluster configuration, written by the controller".into(),
                    ),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| fail(&e))?;
            // A bucket made before the event stream was replicated (or by an older herald, which
            // always made one replica) is scaled with it; JetStream moves the data itself.
            let info = stream.info().await.map_err(|e| fail(&e))?;
            if info.config.num_replicas != replicas {
                let config = stream::Config {
                    num_replicas: replicas,
                    ..info.config.clone()
                };
                self.js.update_stream(config).await.map_err(|e| {
                    other(format!(
                        "cannot change bucket {bucket} from {} to {replicas} replicas: {e}",
                        info.config.num_replicas
                    ))
                })?;
            }
            Ok(())
        })
    }

    fn put(&self, bucket: &str, key: &str, value: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        Box::pin(async move {
            let kv = self.bucket(&bucket).await?;
            kv.put(&key, value).await.map(|_| ()).map_err(other)
        })
    }

    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        Box::pin(async move {
            let kv = self.bucket(&bucket).await?;
            kv.delete(&key).await.map_err(other)
        })
    }

    fn get(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, BrokerError>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        Box::pin(async move {
            let kv = self.bucket(&bucket).await?;
            kv.get(&key).await.map_err(other)
        })
    }

    fn keys(&self, bucket: &str, prefix: &str) -> BoxFuture<'_, Result<Vec<String>, BrokerError>> {
        let (bucket, prefix) = (bucket.to_owned(), format!("{prefix}."));
        Box::pin(async move {
            let kv = self.bucket(&bucket).await?;
            // An empty bucket answers "no keys found" as an error in some versions; to herald
            // that is an empty list.
            let mut keys = match kv.keys().await {
                Ok(k) => k,
                Err(e) if e.to_string().contains("no keys") => return Ok(Vec::new()),
                Err(e) => return Err(other(format!("cannot list bucket {bucket}: {e}"))),
            };
            let mut out = Vec::new();
            while let Some(k) = keys.next().await {
                let k = k.map_err(|e| other(format!("cannot list bucket {bucket}: {e}")))?;
                if k.starts_with(&prefix) {
                    out.push(k);
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn watch(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Box<dyn KeyWatch>, BrokerError>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        Box::pin(async move {
            let kv = self.bucket(&bucket).await?;
            // The watch starts before the read, so no change falls between them.
            let watch = kv
                .watch_with_history(&key)
                .await
                .map_err(|e| other(format!("cannot watch {bucket}/{key}: {e}")))?;
            let first = kv
                .entry(&key)
                .await
                .map_err(|e| other(format!("cannot read {bucket}/{key}: {e}")))?;
            let first = Some(first.and_then(value_of));
            Ok(Box::new(JsWatch { first, watch }) as Box<dyn KeyWatch>)
        })
    }
}

/// An entry's value; `None` for a delete or purge.
fn value_of(entry: kv::Entry) -> Option<Bytes> {
    match entry.operation {
        kv::Operation::Put => Some(entry.value),
        kv::Operation::Delete | kv::Operation::Purge => None,
    }
}

struct JsWatch {
    /// The value read when the watch started, handed out first.
    first: Option<Option<Bytes>>,
    watch: kv::Watch,
}

impl KeyWatch for JsWatch {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Option<Bytes>, BrokerError>>> {
        Box::pin(async move {
            if let Some(first) = self.first.take() {
                return Some(Ok(first));
            }
            match self.watch.next().await? {
                Ok(entry) => Some(Ok(value_of(entry))),
                Err(e) => Some(Err(other(e))),
            }
        })
    }
}

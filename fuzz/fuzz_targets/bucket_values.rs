//! Values of the configuration bucket, which anyone with write access to `$KV.HERALD_CONFIG.>`
//! could set: the first byte picks the key's decoder (delivery defaults, an app's resource
//! subscriptions, the dispatcher's sink subscriptions, delivery facts), the rest is the value.
//! None may panic; what they accept stays within the limits.
#![no_main]

use herald_core::defaults::Defaults;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, value)) = data.split_first() else {
        return;
    };
    let cluster = Defaults::default();
    match which % 4 {
        0 => {
            let _ = Defaults::from_json(value);
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(value)
                && let Ok(v) = herald_core::sinks::parse_app_value(text, &cluster)
            {
                assert!(v.own.len() <= herald_core::limits::MAX_SUBSCRIPTIONS);
                for (who, _) in &v.adopted {
                    assert!(who.starts_with("sink:") || who.starts_with("kyma:"));
                }
            }
        }
        2 => {
            if let Ok((ok, _)) = herald_core::sinks::parse(value, &cluster) {
                for t in ok {
                    // Every accepted sink makes a request URI.
                    assert!(!t.url.host.is_empty());
                    let _: Result<http::Uri, _> =
                        format!("http://{}{}", t.url.authority(), t.url.path).parse();
                }
            }
        }
        _ => {
            let _ = herald_core::report::DeliveryReport::parse(value);
        }
    }
});

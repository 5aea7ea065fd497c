//! The subject encoding: any (source, type) round-trips and stays a legal NATS subject; any
//! token either decodes to what encodes back to it, or is refused.
#![no_main]

use herald_core::subject::{decode_token, encode_token, event_subject, parse_event_subject};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (source, ty) = text.split_once('\n').unwrap_or(("shop", &text));
    let subject = event_subject(source, ty);
    assert!(
        subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-~.".contains(&b))
    );
    assert_eq!(
        parse_event_subject(&subject).expect("an encoded subject decodes"),
        (source.to_owned(), ty.to_owned())
    );
    if let Ok(token) = std::str::from_utf8(data)
        && let Ok(decoded) = decode_token(token)
    {
        assert_eq!(
            encode_token(&decoded),
            token,
            "decoding accepted a non-canonical token"
        );
    }
});

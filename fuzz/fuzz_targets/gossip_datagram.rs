//! Gossip datagrams as they arrive on the UDP port: the sealed-gossip
//! receiver (header, AEAD, clock offset, replay window, reassembly) must
//! drop any bytes without panicking, and chitchat's decoder, which sees what
//! an insider sealed, must refuse any bytes without panicking. Sealed, the
//! same bytes must come back whole when the sender's clock (taken from the
//! first byte) is within the maximum offset of the receiver's, and not at
//! all otherwise.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use chitchat::ChitchatEnvelope;
use libfuzzer_sys::fuzz_target;
use strata_server::auth::ClusterSecret;
use strata_server::gossip_transport::{seal_message, GossipKey, Receiver};

/// The receiver's wall clock, ms.
const NOW: u64 = 1_800_000_000_000;
const MAX_OFFSET_MS: u64 = 500;

fn key() -> &'static GossipKey {
    static KEY: OnceLock<GossipKey> = OnceLock::new();
    KEY.get_or_init(|| {
        GossipKey::derive(
            &ClusterSecret::new("fuzz-secret-0123456789".into()),
            "strata",
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let mut receiver = Receiver::new(key().clone(), 4, Duration::from_millis(MAX_OFFSET_MS));
    assert!(
        receiver.receive(data, NOW).is_err(),
        "unsealed bytes were accepted"
    );

    let mut bytes = data;
    let _ = ChitchatEnvelope::deserialize(&mut bytes);

    // From 1 s behind the receiver to 1.04 s ahead, in 8 ms steps.
    let sent = NOW - 1_000 + u64::from(data.first().copied().unwrap_or(125)) * 8;
    if let Some(datagrams) = seal_message(key(), 1, 1, &mut 0, sent, data) {
        let mut whole = None;
        for datagram in &datagrams {
            if let Ok(Some(message)) = receiver.receive(datagram, NOW) {
                whole = Some(message);
            }
        }
        let expected = (sent.abs_diff(NOW) <= MAX_OFFSET_MS).then_some(data);
        assert_eq!(whole.as_deref(), expected);
    }
});

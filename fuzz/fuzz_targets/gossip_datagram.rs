//! Gossip datagrams as they arrive on the UDP port: the sealed-gossip
//! receiver (header, AEAD, replay window, reassembly) must drop any bytes
//! without panicking, and chitchat's decoder, which sees what an insider
//! sealed, must refuse any bytes without panicking. Sealed, the same bytes
//! must come back whole.

#![no_main]

use std::sync::OnceLock;

use chitchat::ChitchatEnvelope;
use libfuzzer_sys::fuzz_target;
use strata_server::auth::ClusterSecret;
use strata_server::gossip_transport::{seal_message, GossipKey, Receiver};

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
    let mut receiver = Receiver::new(key().clone(), 4);
    assert!(
        receiver.receive(data).is_err(),
        "unsealed bytes were accepted"
    );

    let mut bytes = data;
    let _ = ChitchatEnvelope::deserialize(&mut bytes);

    if let Some(datagrams) = seal_message(key(), 1, 1, &mut 0, data) {
        let mut whole = None;
        for datagram in &datagrams {
            if let Ok(Some(message)) = receiver.receive(datagram) {
                whole = Some(message);
            }
        }
        assert_eq!(whole.as_deref(), Some(data));
    }
});

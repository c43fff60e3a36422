//! Arbitrary bytes as a peer's certificate DER, through the identity parser
//! (`SpiffeId::from_certificate`). It must not panic or allocate past the limit, and an
//! identity it accepts must be valid: its URI form parses back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicraft::fuzzing::spiffe_id_from_der;
use quicraft::tls::{SpiffeId, validate_cluster_name, validate_node_id};

quicraft_fuzz::guard_allocations!();

fuzz_target!(|data: &[u8]| {
    if data.len() > quicraft_fuzz::MAX_INPUT {
        return;
    }
    if let Ok(id) = spiffe_id_from_der(data) {
        assert!(validate_cluster_name(id.cluster()).is_ok());
        assert!(validate_node_id(id.node()).is_ok());
        let reparsed = SpiffeId::parse_uri(&id.to_uri()).expect("an accepted id re-parses");
        assert_eq!(reparsed, id);
    }
});

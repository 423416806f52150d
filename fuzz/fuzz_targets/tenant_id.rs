//! Tenant ids: whatever is accepted is a safe path component and NATS token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantvec::tenant::TenantId;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = TenantId::parse(raw) {
        let s = id.as_str();
        assert!(!s.is_empty() && s.len() <= 64);
        assert!(s != "." && s != ".." && !s.contains(['/', '\\', '.', '*', '>', ' ', '\0']));
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
    }
});

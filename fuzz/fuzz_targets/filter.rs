//! Filter parsing and evaluation: any JSON gives a filter or an error; a
//! parsed filter evaluates on any metadata without panicking, and parsing
//! its JSON again gives the same filter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tenantvec::filter::Filter;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (filter_json, metadata) = match &value {
        Value::Array(pair) if pair.len() == 2 => (&pair[0], pair[1].as_object()),
        v => (v, None),
    };
    if let Ok(filter) = Filter::parse(filter_json) {
        assert_eq!(Filter::parse(filter_json).ok(), Some(filter.clone()));
        if let Some(m) = metadata {
            let _ = filter.matches(m);
        }
    }
});

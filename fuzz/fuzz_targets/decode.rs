//! Request decoding for every verb: any bytes give a command or an error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantvec::config::Settings;
use tenantvec::protocol::Verb;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static SETTINGS: Settings = Settings::defaults();
    }
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let verb = Verb::ALL[selector as usize % Verb::ALL.len()];
    SETTINGS.with(|s| {
        let _ = tenantvec::transport::decode::command(verb, body, s);
    });
});

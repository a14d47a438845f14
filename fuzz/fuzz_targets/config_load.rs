//! The rule-file loader on arbitrary text: it never panics, and every problem it reports
//! is a `file:line:col: reason` line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polybridge_bridge::config::load;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No environment: every `${VAR}` without a default is a reported error.
    if let Err(e) = load(text, "fuzz.yaml", &|_| None) {
        let out = e.to_string();
        assert!(!out.is_empty(), "an error without a message");
        for line in out.lines() {
            let mut parts = line.splitn(4, ':');
            let (file, l, c) = (parts.next(), parts.next(), parts.next());
            assert!(
                file == Some("fuzz.yaml")
                    && l.is_some_and(|l| l.parse::<usize>().is_ok())
                    && c.is_some_and(|c| c.parse::<usize>().is_ok()),
                "a line not in file:line:col form: {line:?}"
            );
        }
    }
});

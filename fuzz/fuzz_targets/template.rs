//! The destination template engine on arbitrary text: parsing never panics; a template it
//! accepts prints back to text that parses to the same template; rendering never panics,
//! whatever the message holds (binary key, binary headers, missing values).
#![no_main]

use libfuzzer_sys::fuzz_target;
use polybridge_bridge::template::{Template, TemplateInput};
use polybridge_core::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&captures, rest)) = data.split_first() else {
        return;
    };
    let captures = usize::from(captures % 8);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(template) = Template::parse(text, captures) else {
        return;
    };
    let printed = template.to_string();
    let again = Template::parse(&printed, captures)
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, template, "{text:?} printed as {printed:?}");

    let values = ["x", "", "a.b", "+", "#", "é", "{1}"];
    let caps: Vec<&str> = (0..captures).map(|i| values[i % values.len()]).collect();
    let messages = [
        Message::new("payload"),
        Message::new(vec![0xffu8, 0])
            .with_key(vec![0xfeu8])
            .with_header("tenant", vec![0xffu8])
            .with_header("h", "v"),
        Message::new("").with_key("k").with_header("tenant", "t1"),
    ];
    for message in &messages {
        let input = TemplateInput {
            route: "r",
            topic: "a.b.c",
            captures: &caps,
            message,
        };
        let _ = template.render(&input);
        if template.is_constant() {
            assert!(
                template.render(&input).is_ok(),
                "a constant template failed to render"
            );
        }
    }
});

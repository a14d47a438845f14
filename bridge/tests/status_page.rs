//! The admin server's status page, rendered by a real headless Chromium against the real
//! binary running the quickstart (`generate://` → `stdout://`, no broker needed): the DOM
//! after the page's script ran shows the route and non-zero counters, and a screenshot of
//! it is a real rendering (right size, many colours, the "ok" badges drawn).
//!
//! Chromium comes from the Debian package `chromium` (scripts/install-brokers.sh), or from
//! `POLYBRIDGE_CHROMIUM`. Without it the tests fail, unless `POLYBRIDGE_SKIP_BROWSER` is set:
//! then they are skipped with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The Chromium binary: `POLYBRIDGE_CHROMIUM`, else `chromium` or `chromium-browser` on
/// the PATH.
fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("POLYBRIDGE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Chromium, or None (after saying why) when it is absent and the browser tests may be
/// skipped; panics when it is absent and they may not.
fn chromium_or_skip() -> Option<PathBuf> {
    if let Some(p) = find_chromium() {
        return Some(p);
    }
    if std::env::var_os("POLYBRIDGE_SKIP_BROWSER").is_some() {
        eprintln!(
            "skipping the status page browser test: chromium is not installed and \
             POLYBRIDGE_SKIP_BROWSER is set"
        );
        return None;
    }
    panic!(
        "chromium is not installed: run scripts/install-brokers.sh (Debian packages chromium \
         and chromium-driver), point POLYBRIDGE_CHROMIUM at a Chromium binary, or set \
         POLYBRIDGE_SKIP_BROWSER=1 to skip this test"
    );
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=FILE`);
/// returns its stdout. Fails the test if it does not finish within two minutes.
fn run_chromium(chromium: &Path, dir: &Path, label: &str, mode: &str, url: &str) -> String {
    let profile = dir.join(format!("profile-{label}"));
    std::fs::create_dir_all(&profile).unwrap();
    let out_file = dir.join(format!("chromium-{label}.out"));
    let err_file = dir.join(format!("chromium-{label}.err"));
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,800",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {mode} did not finish within 120 s:\n{}",
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium {mode} failed ({status}):\n{}",
        std::fs::read_to_string(&err_file).unwrap_or_default()
    );
    std::fs::read_to_string(&out_file).unwrap()
}

/// The quickstart rule file, generating faster and with the admin server on `port`.
fn quickstart(port: u16) -> String {
    let text = std::fs::read_to_string(root().join("examples/quickstart.yaml")).unwrap();
    let admin = "admin:\n  enabled: false";
    assert!(text.contains(admin), "the quickstart changed: {text}");
    assert!(
        text.contains("interval=250ms"),
        "the quickstart changed: {text}"
    );
    text.replace(admin, &format!("admin:\n  listen: \"127.0.0.1:{port}\""))
        .replace("interval=250ms", "interval=20ms")
}

/// The bridge running the quickstart with its admin server on a free port, once its route
/// has delivered messages.
fn start_quickstart(name: &str) -> (Daemon, u16, TempDir) {
    let dir = temp_dir(name);
    let file = dir.join("quickstart.yaml");
    let port = free_port();
    std::fs::write(&file, quickstart(port)).unwrap();
    let mut d = Daemon::start(&file, &[]);
    wait_for("messages delivered", Duration::from_secs(30), || {
        if let Ok(Some(s)) = d.child.try_wait() {
            panic!("polybridge exited ({s}):\n{}", d.log());
        }
        let Some((200, body)) = http_get(port, "/api/routes") else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["routes"][0]["delivered"].as_u64().unwrap_or(0) > 0
    });
    (d, port, dir)
}

/// The route's `received` counter from `/api/routes`.
fn received(port: u16) -> u64 {
    let (status, body) = http_get(port, "/api/routes").expect("admin server answers");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["routes"][0]["received"].as_u64().unwrap()
}

/// The text of the element carrying `data-field="field"` inside `scope` (tags stripped).
fn field<'a>(scope: &'a str, field: &str) -> Option<&'a str> {
    let marker = format!("data-field=\"{field}\"");
    let at = scope.find(&marker)?;
    let rest = &scope[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].trim())
}

/// A number as the page formats counts (`1,234`), or None.
fn number(text: &str) -> Option<f64> {
    text.replace(',', "").parse().ok()
}

/// The markup of the table row of route `name`.
fn route_row<'a>(dom: &'a str, name: &str) -> &'a str {
    let marker = format!("data-route=\"{name}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for route {name} in the DOM:\n{dom}"));
    let end = dom[at..].find("</tr>").map_or(dom.len(), |e| at + e);
    &dom[at..end]
}

#[test]
fn the_status_page_shows_live_route_data_in_headless_chromium() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let (mut d, port, dir) = start_quickstart("statuspage");
    let url = format!("http://127.0.0.1:{port}/");

    let received_before = received(port);
    let dom = run_chromium(&chromium, &dir, "dom", "--dump-dom", &url);
    assert!(
        dom.contains("data-state=\"live\""),
        "the page did not load data (body state):\n{dom}"
    );
    let row = route_row(&dom, "warm-rooms");
    assert_eq!(field(row, "name"), Some("warm-rooms"), "{row}");
    assert_eq!(
        field(row, "path"),
        Some("sensors: sensors.*.temp → console: alerts.{1}"),
        "{row}"
    );
    assert_eq!(field(row, "state"), Some("subscribed"), "{row}");
    let counter = |f: &str| {
        let text = field(row, f).unwrap_or_else(|| panic!("no {f} in {row}"));
        number(text).unwrap_or_else(|| panic!("{f} is not a number: {text:?} in {row}"))
    };
    assert!(counter("received") > 0.0, "{row}");
    assert!(counter("delivered") > 0.0, "{row}");
    assert!(counter("acked") > 0.0, "{row}");
    assert!(
        counter("received") >= counter("delivered") + counter("filtered"),
        "{row}"
    );
    assert_eq!(counter("dead_lettered"), 0.0, "{row}");
    assert_eq!(counter("errors"), 0.0, "{row}");
    // Live data: counted after the browser started, and a rate, which needs two polls (the
    // page refreshed itself while Chromium ran). Rates use the bridge's clock, and Chromium's
    // virtual time runs the polls faster than real time, so the rate itself may be small.
    assert!(
        counter("received") > received_before as f64,
        "the page shows data from before it was opened ({received_before}): {row}"
    );
    let in_rate = field(row, "in-rate").unwrap();
    assert!(
        number(in_rate).is_some_and(|r| r >= 0.0),
        "no in-rate (the page did not refresh): {in_rate:?} in {row}"
    );
    assert!(
        field(row, "in_flight").is_some_and(|t| t.contains(" / ")),
        "{row}"
    );
    for (broker, scheme) in [("sensors", "generate://"), ("console", "stdout://")] {
        let marker = format!("data-broker=\"{broker}\"");
        let at = dom
            .find(&marker)
            .unwrap_or_else(|| panic!("no row for broker {broker}:\n{dom}"));
        let brow = &dom[at..at + dom[at..].find("</tr>").unwrap()];
        assert_eq!(field(brow, "scheme"), Some(scheme), "{brow}");
        assert_eq!(field(brow, "connected"), Some("connected"), "{brow}");
        assert_eq!(field(brow, "used-by"), Some("warm-rooms"), "{brow}");
    }
    assert!(
        number(field(&dom, "total-received").unwrap()).unwrap() > 0.0,
        "{dom}"
    );
    assert!(dom.contains(">Healthy<"), "overall state: {dom}");

    let shot = dir.join("status.png");
    run_chromium(
        &chromium,
        &dir,
        "shot",
        &format!("--screenshot={}", shot.display()),
        &url,
    );
    check_screenshot(&shot);

    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        d.log()
    );
}

/// The screenshot is a real rendering of the page with data: 1200×800, not tiny, many
/// colours with no single one covering nearly everything, and the green "ok" badges
/// (drawn only once data arrived: "Healthy", "subscribed", "connected") present.
fn check_screenshot(path: &Path) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    assert!(
        bytes.len() > 10_000,
        "the screenshot is only {} bytes",
        bytes.len()
    );
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1200, 800), "screenshot size");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let mut colours: HashMap<[u8; 3], u64> = HashMap::new();
    for px in buf[..info.buffer_size()].chunks_exact(channels) {
        *colours.entry([px[0], px[1], px[2]]).or_default() += 1;
    }
    let total: u64 = colours.values().sum();
    let top = colours.values().copied().max().unwrap_or(0);
    assert!(
        colours.len() >= 32,
        "only {} distinct colours: a blank page?",
        colours.len()
    );
    assert!(
        (top as f64) < 0.97 * total as f64,
        "one colour covers {:.1}% of the screenshot: a blank page?",
        100.0 * top as f64 / total as f64
    );
    // The "ok" badge background, light (#dcf3e3) or dark (#12331f) scheme.
    let near = |c: &[u8; 3], want: [u8; 3]| c.iter().zip(want).all(|(a, b)| a.abs_diff(b) <= 6);
    let ok_pixels: u64 = colours
        .iter()
        .filter(|(c, _)| near(c, [0xdc, 0xf3, 0xe3]) || near(c, [0x12, 0x33, 0x1f]))
        .map(|(_, n)| n)
        .sum();
    assert!(
        ok_pixels > 500,
        "no green status badges in the screenshot ({ok_pixels} pixels): the page did not render data"
    );
}

#[test]
fn the_status_page_is_self_contained_and_its_api_answers() {
    let (mut d, port, _dir) = start_quickstart("statusapi");
    let get = |path: &str| http_get(port, path).unwrap_or_else(|| panic!("GET {path}"));
    let (status, html) = get("/");
    assert_eq!(status, 200);
    assert!(html.contains("<html lang=\"en\">"), "{html}");
    assert!(html.contains("src=\"status.js\""), "{html}");
    let (status, js) = get("/status.js");
    assert_eq!(status, 200);
    assert!(js.contains("api/status") && js.contains("api/routes"));
    let (status, css) = get("/status.css");
    assert_eq!(status, 200);
    // No external assets: nothing is loaded from another origin.
    for (name, text) in [
        ("index.html", &html),
        ("status.js", &js),
        ("status.css", &css),
    ] {
        for bad in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "@import",
            "url(",
        ] {
            assert!(!text.contains(bad), "{name} loads an external asset: {bad}");
        }
    }
    assert!(!js.contains("innerHTML"), "values are set as text only");

    let (status, body) = get("/api/status");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["ready"], true);
    assert!(v["uptime_seconds"].as_f64().unwrap() >= 0.0);
    let r = &v["routes"][0];
    assert_eq!(r["name"], "warm-rooms");
    assert_eq!(r["subscribed"], true);
    assert!(r["received"].as_u64().unwrap() > 0, "{r}");
    assert!(r["delivered"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors_total"], 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert!(r["latency"]["count"].as_u64().unwrap() > 0, "{r}");
    assert!(v["totals"]["received"].as_u64().unwrap() > 0, "{v}");
    let brokers: Vec<(&str, &str, bool)> = v["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap(),
                b["scheme"].as_str().unwrap(),
                b["connected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        brokers,
        [("console", "stdout", true), ("sensors", "generate", true)]
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn the_screenshot_check_rejects_the_page_without_data() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    // The page opened from a file: its requests fail, so it shows "Unreachable" and no data.
    let dir = temp_dir("statusnodata");
    let page = root().join("bridge/src/status/index.html");
    let url = format!("file://{}", page.display());
    let dom = run_chromium(&chromium, &dir, "dom", "--dump-dom", &url);
    assert!(dom.contains("data-state=\"error\""), "{dom}");
    assert!(dom.contains(">Unreachable<"), "{dom}");
    let shot = dir.join("nodata.png");
    run_chromium(
        &chromium,
        &dir,
        "shot",
        &format!("--screenshot={}", shot.display()),
        &url,
    );
    let checked = std::panic::catch_unwind(|| check_screenshot(&shot));
    assert!(
        checked.is_err(),
        "a screenshot of the page without data passed the check"
    );
}

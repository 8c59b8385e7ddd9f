//! The proxy against InfluxDB itself: the same request sent to a real influxd directly and
//! through the proxy, each into a database of its own, gets the same status, the same error
//! text and stores the same points. A point without a timestamp is stamped by whoever saw it
//! first, so stored times inside the request's window compare as "now" (the proxy's must be
//! one time per request, a whole number of the precision). What the proxy does differently on
//! purpose is [`DIFFERENCES`], the table the README's list of differences follows.
//!
//! Corpus: the inputs of InfluxDB's parser tests (`tests/data/points_test_inputs.json`, from
//! `models/points_test.go` of 1.6.7), the write cases of its server tests
//! (`tests/server_test.go`), Telegraf-shaped batches, and the cases of issue 10; over `/write`
//! and, for the corpus, `/api/v2/write` (compared with the `/write` it becomes).

mod support;

use std::collections::BTreeSet;

use support::{gzip, now_ns, Influxd, Proxy, ADMIN, ADMIN_PASSWORD};

/// What the proxy answers on purpose where InfluxDB 1.x answers otherwise, and why.
struct Difference {
    case: &'static str,
    status: u16,
    error: Option<&'static str>,
    why: &'static str,
}

/// The documented differences (README, "Where the proxy differs from InfluxDB"). Besides
/// these, a point without a timestamp gets the proxy's receive time rather than InfluxDB's,
/// so retries, mirrors and the spool store the same point.
const DIFFERENCES: &[Difference] = &[
    Difference {
        case: "crlf line endings",
        status: 204,
        error: None,
        why: "Windows clients end lines with CRLF; InfluxDB 1.x rejects every such line",
    },
    Difference {
        case: "unknown precision",
        status: 400,
        error: Some("invalid precision \"x\" (use n, u, ms, s, m or h)"),
        why: "InfluxDB 1.x reads an unknown precision as nanoseconds, silently misplacing points",
    },
    Difference {
        case: "unknown content-encoding",
        status: 400,
        error: Some("unsupported Content-Encoding \"br\" (use gzip or identity)"),
        why: "InfluxDB 1.x parses a body it cannot decode as line protocol",
    },
    Difference {
        case: "gzip header on a plain body",
        status: 400,
        error: Some("unable to decode gzip body: invalid gzip header"),
        why: "the proxy must read the body to route and stamp it",
    },
];

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Plain,
    Gzip,
    Chunked,
    /// The body as it is, under this `Content-Encoding`.
    Labelled(&'static str),
}

struct Case {
    name: String,
    /// Path and query through the proxy and directly, `{db}` standing for the database.
    proxied: String,
    direct: String,
    /// Requests sent one after the other.
    bodies: Vec<Vec<u8>>,
    encoding: Encoding,
    /// Nanoseconds per unit of the write's precision.
    unit: i64,
}

impl Case {
    fn v1(name: &str, query: &str, body: impl Into<Vec<u8>>) -> Case {
        let path = format!("/write?db={{db}}{query}");
        let unit = match query
            .split("precision=")
            .nth(1)
            .map(|p| &p[..p.find('&').unwrap_or(p.len())])
        {
            Some("u") => 1_000,
            Some("ms") => 1_000_000,
            Some("s") => 1_000_000_000,
            Some("m") => 60_000_000_000,
            Some("h") => 3_600_000_000_000,
            _ => 1,
        };
        Case {
            name: name.into(),
            proxied: path.clone(),
            direct: path,
            bodies: vec![body.into()],
            encoding: Encoding::Plain,
            unit,
        }
    }

    fn v2(name: &str, body: impl Into<Vec<u8>>) -> Case {
        Case {
            proxied: "/api/v2/write?bucket={db}&org=x&precision=ns".into(),
            direct: "/write?db={db}&precision=n".into(),
            ..Case::v1(name, "", body)
        }
    }

    fn encoded(mut self, encoding: Encoding) -> Case {
        self.encoding = encoding;
        self
    }

    fn then(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.bodies.push(body.into());
        self
    }
}

/// An answer as the client reads it, with the database's name taken out of the error.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    error: Option<String>,
    header: Option<Vec<u8>>,
}

/// Sends one request over a fresh connection and reads the answer byte for byte: InfluxDB's
/// error header can hold a NUL, which HTTP client libraries refuse to parse.
async fn send(url: &str, db: &str, case: &Case, body: &[u8], auth: bool) -> Answer {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url.replace("{db}", db);
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if auth {
        let pair =
            base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN}:{ADMIN_PASSWORD}"));
        head.push_str(&format!("Authorization: Basic {pair}\r\n"));
    }
    let payload = match case.encoding {
        Encoding::Gzip => {
            head.push_str("Content-Encoding: gzip\r\n");
            gzip(body)
        }
        Encoding::Labelled(name) => {
            head.push_str(&format!("Content-Encoding: {name}\r\n"));
            body.to_vec()
        }
        Encoding::Plain | Encoding::Chunked => body.to_vec(),
    };
    let mut request = head.into_bytes();
    if case.encoding == Encoding::Chunked {
        request.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for frame in payload.chunks(1000) {
            request.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
            request.extend_from_slice(frame);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
    } else {
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", payload.len()).as_bytes());
        request.extend_from_slice(&payload);
    }
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut answer = vec![];
    stream.read_to_end(&mut answer).await.unwrap();
    let split = memchr::memmem::find(&answer, b"\r\n\r\n").expect("a whole answer");
    let (head, body) = (&answer[..split], &answer[split + 4..]);
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = String::from_utf8_lossy(lines.next().unwrap()).to_string();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut header = None;
    let mut chunked = false;
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').unwrap();
        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        match name.as_str() {
            "x-influxdb-error" => header = Some(value.to_vec()),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case(b"chunked"),
            _ => {}
        }
    }
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    let error = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(|e| e.replace(db, "DB")));
    Answer {
        status,
        error,
        header: header.map(|h| String::from_utf8_lossy(&h).replace(db, "DB").into_bytes()),
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let end = memchr::memmem::find(body, b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 4 + size..];
    }
}

/// What a database holds: one line per point (series, then fields in column order, the time
/// as `now` when it lies in `window`), and its field keys with their types.
async fn stored(
    client: &reqwest::Client,
    db: &str,
    window: (i64, i64),
    stamps: &mut BTreeSet<i64>,
) -> (Vec<String>, Vec<String>) {
    let influxd = Influxd::shared();
    let query = |q: &str| {
        client
            .get(format!("{}/query", influxd.url))
            .basic_auth(ADMIN, Some(ADMIN_PASSWORD))
            .query(&[("db", db), ("epoch", "ns"), ("q", q)])
            .send()
    };
    let points: serde_json::Value = query("SELECT * FROM /.*/ GROUP BY *")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut rows = vec![];
    for series in points["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let columns = series["columns"].as_array().unwrap();
        for values in series["values"].as_array().unwrap() {
            let values = values.as_array().unwrap();
            let time = values[0].as_i64().unwrap();
            let time = if (window.0..=window.1).contains(&time) {
                stamps.insert(time);
                "now".to_string()
            } else {
                time.to_string()
            };
            let fields: Vec<String> = columns
                .iter()
                .zip(values)
                .skip(1)
                .filter(|(_, v)| !v.is_null())
                .map(|(c, v)| format!("{}={v}", c.as_str().unwrap()))
                .collect();
            rows.push(format!(
                "{} {} {} @{time}",
                series["name"],
                series["tags"],
                fields.join(",")
            ));
        }
    }
    let keys: serde_json::Value = query("SHOW FIELD KEYS")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut fields = vec![];
    for series in keys["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for pair in series["values"].as_array().unwrap() {
            fields.push(format!("{}.{}:{}", series["name"], pair[0], pair[1]));
        }
    }
    rows.sort();
    (rows, fields)
}

/// Sends `case` both ways and returns what differs, if anything.
async fn compare(
    client: &reqwest::Client,
    proxy: &Proxy,
    index: usize,
    case: &Case,
) -> Option<String> {
    let influxd = Influxd::shared();
    let (direct_db, proxied_db) = (
        format!("diff_{index}_direct"),
        format!("diff_{index}_proxied"),
    );
    influxd.database(&direct_db);
    influxd.database(&proxied_db);
    let mut problems = vec![];
    let mut windows = ((i64::MAX, 0), (i64::MAX, 0));
    let documented = DIFFERENCES.iter().find(|d| d.case == case.name);
    for body in &case.bodies {
        let start = now_ns() - case.unit;
        let direct_url = format!("{}{}", influxd.url, case.direct);
        let direct = send(&direct_url, &direct_db, case, body, true).await;
        windows.0 = (windows.0 .0.min(start), now_ns());
        let start = now_ns() - case.unit;
        let proxied = send(&proxy.url(&case.proxied), &proxied_db, case, body, false).await;
        windows.1 = (windows.1 .0.min(start), now_ns());
        if let Some(documented) = documented {
            let expected = (documented.status, documented.error.map(String::from));
            if (proxied.status, proxied.error.clone()) != expected {
                problems.push(format!("documented answer {expected:?}, proxy {proxied:?}"));
            }
            if (direct.status, direct.error.clone()) == expected {
                problems.push("influxd answers as the proxy: the difference is stale".into());
            }
            continue;
        }
        if (direct.status, &direct.error) != (proxied.status, &proxied.error) {
            problems.push(format!("influxd {direct:?}\n       proxy {proxied:?}"));
        } else if direct.header.as_deref().map(spaced) != proxied.header {
            problems.push(format!(
                "X-Influxdb-Error: influxd {:?}, proxy {:?}",
                direct.header.as_deref().map(String::from_utf8_lossy),
                proxied.header.as_deref().map(String::from_utf8_lossy)
            ));
        }
    }
    if documented.is_none() {
        let mut ignored = BTreeSet::new();
        let direct = stored(client, &direct_db, windows.0, &mut ignored).await;
        let mut stamps = BTreeSet::new();
        let proxied = stored(client, &proxied_db, windows.1, &mut stamps).await;
        if direct != proxied {
            problems.push(format!(
                "stored: influxd {direct:?}\n        proxy {proxied:?}"
            ));
        }
        if stamps.len() > case.bodies.len() || stamps.iter().any(|t| t % case.unit != 0) {
            problems.push(format!("proxy stamps {stamps:?} (unit {} ns)", case.unit));
        }
    }
    for db in [direct_db, proxied_db] {
        influxd.blocking_query(&format!("DROP DATABASE \"{db}\""), None, true);
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{}: {:?}\n    {}",
            case.name,
            String::from_utf8_lossy(&case.bodies[0][..case.bodies[0].len().min(200)]),
            problems.join("\n    ")
        )
    })
}

/// A header as the proxy passes it on: the control bytes HTTP forbids as spaces.
fn spaced(header: &[u8]) -> Vec<u8> {
    header
        .iter()
        .map(|&b| {
            if (b < 0x20 && b != b'\t') || b == 0x7f {
                b' '
            } else {
                b
            }
        })
        .collect()
}

fn corpus() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/points_test_inputs.json"
    ))
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Lines shaped like Telegraf's: tags, mixed field types, no timestamps.
fn telegraf_batch(lines: usize, bad_at: Option<usize>) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..lines {
        if Some(i) == bad_at {
            out.push_str("cpu,host=h1 usage_idle=oops\n");
            continue;
        }
        out.push_str(&format!(
            "cpu,cpu=cpu{},host=host-{:03},region=eu usage_idle={}.5,usage_user={}i,up=true,state=\"ok {}\"\n",
            i % 8,
            i % 50,
            i % 100,
            i,
            i % 3
        ));
    }
    out.into_bytes()
}

fn cases() -> Vec<Case> {
    let ts = 1_600_000_000_000_000_000i64;
    let mut cases = vec![];
    for (i, input) in corpus().into_iter().enumerate() {
        cases.push(Case::v1(&format!("points_test #{i}"), "", input.clone()));
        cases.push(Case::v2(&format!("points_test #{i} (v2)"), input));
    }
    // tests/server_test.go: one line per value type, a partial write, a type conflict.
    for value in ["1.0", "true", "\"disk full\"", "100i", "100u"] {
        cases.push(Case::v1(
            &format!("server_test {value}"),
            "",
            format!("cpu,host=server01 value={value} {ts}"),
        ));
    }
    cases.push(Case::v1(
        "server_test partial",
        "",
        format!("cpu,host=server01 value=100 {ts}\ncpu,host=server01 value=NaN {ts}0\ncpu,host=server01 value=NaN {ts}00"),
    ));
    cases.push(
        Case::v1("server_test field type conflict", "", "cpu value=1i 1420070401000000000")
            .then("cpu value=2i 1420070402000000000\ncpu value=3  1420070403000000000\ncpu value=4i 1420070404000000000"),
    );
    for (precision, time) in [
        ("n", "946730096789012345"),
        ("u", "946730096789012"),
        ("ms", "946730096789"),
        ("s", "946730096"),
        ("m", "15778834"),
        ("h", "262980"),
    ] {
        cases.push(Case::v1(
            &format!("server_test precision {precision}"),
            &format!("&precision={precision}"),
            format!("cpu_{precision}_precision value=1 {time}\nuntimed_{precision} value=2"),
        ));
    }
    // Telegraf-shaped batches.
    cases.push(Case::v1("telegraf untimed", "", telegraf_batch(500, None)));
    cases.push(
        Case::v1(
            "telegraf untimed gzip",
            "&precision=s",
            telegraf_batch(500, None),
        )
        .encoded(Encoding::Gzip),
    );
    cases.push(
        Case::v1(
            "telegraf untimed chunked",
            "&precision=ms",
            telegraf_batch(500, None),
        )
        .encoded(Encoding::Chunked),
    );
    cases.push(Case::v1(
        "telegraf one bad line",
        "",
        telegraf_batch(500, Some(250)),
    ));
    cases.push(
        Case::v1(
            "telegraf one bad line gzip",
            "",
            telegraf_batch(500, Some(3)),
        )
        .encoded(Encoding::Gzip),
    );
    // Issue 10, class by class.
    for body in [
        // A: lines influxd rejects reach it as sent.
        "cpu",
        "cpu value=NaN",
        "cpu value=1 1-",
        "m f=1 +1600000000",
        "m f=1 1600000000\\",
        // B: timestamps after any whitespace.
        "cpu value=1.0 1257894000000000000   ",
        "m f=1 123 ",
        "m f=1 \t1600000000000000000",
        "m f=1 \u{0}1600000000000000000",
        // C: no byte changed.
        "m f=1\t",
        "m s=\"x\"\t",
        "\r",
        "m f=1 1600000000000000000\r",
        "m s=\"a\"\u{0}",
        // D: NULs that influxd copies into its error header.
        "m,t=a\u{0}b f=1",
        "m\u{0} f=x",
        "m,t=a\u{0}b f=1 1600000000000000000",
        // Mixed bodies, untimed lines among them.
        "a v=1\n# c\nb v=2 7\nc v=3   \nd v=4",
        "a v=1\nbad\nc v=3\n",
        "\n\n  \n# only comments\n",
        "m s=\"multi\nline\" \nn f=1",
    ] {
        cases.push(Case::v1(&format!("issue 10 {body:?}"), "", body));
    }
    // E: an error longer than any header: every line bad, the last one by its key length.
    let mut long = String::new();
    for i in 0..3000 {
        long.push_str(&format!("bad_{i} f=x\n"));
    }
    long.push_str(&format!("{} a=1 1\n", "m".repeat(65535)));
    cases.push(Case::v1("issue 10 long error", "", long));
    // F: the query string as Go reads it.
    cases.push(Case::v1("issue 10 semicolon", ";precision=s", "m f=1"));
    cases.push(Case::v1(
        "issue 10 semicolon in a later pair",
        "&precision=s;rp=x",
        "m f=1 1600000000",
    ));
    cases.push(Case::v1(
        "issue 10 bad escape",
        "&precision=%zz",
        "m f=1 1600000000000000000",
    ));
    // The documented differences.
    cases.push(Case::v1(
        "crlf line endings",
        "",
        format!("m f=1 {ts}\r\nm f=2\r\n"),
    ));
    cases.push(Case::v1(
        "unknown precision",
        "&precision=x",
        format!("m f=1 {ts}"),
    ));
    cases.push(
        Case::v1("unknown content-encoding", "", format!("m f=1 {ts}"))
            .encoded(Encoding::Labelled("br")),
    );
    cases.push(
        Case::v1("gzip header on a plain body", "", format!("m f=1 {ts}"))
            .encoded(Encoding::Labelled("gzip")),
    );
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_proxy_store_what_influxd_stores() {
    let influxd = Influxd::shared();
    let proxy = Proxy::start(&format!(
        "[clusters.default]\nnodes = [\"{}\"]\nusername = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\n",
        influxd.url
    ))
    .await;
    let client = reqwest::Client::new();
    let cases = cases();
    let mut failures = vec![];
    for (index, case) in cases.iter().enumerate() {
        if let Some(problem) = compare(&client, &proxy, index, case).await {
            failures.push(problem);
        }
    }
    for difference in DIFFERENCES {
        assert!(
            cases.iter().any(|c| c.name == difference.case),
            "documented difference {:?} ({}) has no case",
            difference.case,
            difference.why
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

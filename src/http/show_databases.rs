//! A `SHOW DATABASES` answer cut down to the databases a principal may read, in the shape
//! the upstream gave it: JSON (one object, or one per line when chunked; indented with
//! `pretty=true`), CSV, or MessagePack. Only the results of the statements named are
//! touched; every other byte of meaning stays.

use serde_json::Value;

use crate::error::ProxyError;

/// The answer `body` (of `content_type`) with the `databases` rows of statements
/// `statements` (0-based ids) kept only where `visible` says so.
pub fn filter(
    body: &[u8],
    content_type: &str,
    statements: &[usize],
    visible: impl Fn(&str) -> bool,
    pretty: bool,
) -> Result<Vec<u8>, ProxyError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/json" | "" => json(body, statements, &visible, pretty),
        "text/csv" | "application/csv" => Ok(csv(body, &visible)),
        "application/x-msgpack" => msgpack(body, statements, &visible),
        _ => Err(ProxyError::Unfilterable(
            "an answer type the proxy cannot read",
        )),
    }
}

fn json(
    body: &[u8],
    statements: &[usize],
    visible: &dyn Fn(&str) -> bool,
    pretty: bool,
) -> Result<Vec<u8>, ProxyError> {
    let mut out = Vec::with_capacity(body.len());
    for value in serde_json::Deserializer::from_slice(body).into_iter::<Value>() {
        let mut value = value.map_err(|_| ProxyError::Unfilterable("invalid JSON"))?;
        let results = value.get_mut("results").and_then(Value::as_array_mut);
        for result in results.into_iter().flatten() {
            let id = result.get("statement_id").and_then(Value::as_u64);
            if !id.is_some_and(|id| statements.contains(&(id as usize))) {
                continue;
            }
            let series = result.get_mut("series").and_then(Value::as_array_mut);
            for series in series.into_iter().flatten() {
                if series.get("name").and_then(Value::as_str) != Some("databases") {
                    continue;
                }
                if let Some(rows) = series.get_mut("values").and_then(Value::as_array_mut) {
                    rows.retain(|row| row.get(0).and_then(Value::as_str).is_some_and(visible));
                }
            }
        }
        if pretty {
            // Go's json.MarshalIndent with four spaces, as influxd's `pretty=true`.
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
            serde::Serialize::serialize(&value, &mut serializer)
                .map_err(|_| ProxyError::Unfilterable("invalid JSON"))?;
        } else {
            serde_json::to_writer(&mut out, &value)
                .map_err(|_| ProxyError::Unfilterable("invalid JSON"))?;
        }
        out.push(b'\n');
    }
    Ok(out)
}

/// CSV has no statement ids: a block whose header is `name,tags,name` and whose rows are
/// `databases,…` is a `SHOW DATABASES` answer (no other statement answers with both).
fn csv(body: &[u8], visible: &dyn Fn(&str) -> bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        let databases_block = line.trim_end_matches(['\r', '\n']) == "name,tags,name"
            && lines.peek().is_some_and(|l| l.starts_with("databases,"));
        if !databases_block {
            out.push_str(line);
            continue;
        }
        let mut kept = vec![];
        while let Some(row) = lines.next_if(|l| l.starts_with("databases,")) {
            let name = row
                .trim_end_matches(['\r', '\n'])
                .splitn(3, ',')
                .nth(2)
                .unwrap_or("");
            if visible(&unquote_csv(name)) {
                kept.push(row);
            }
        }
        if !kept.is_empty() {
            out.push_str(line);
            kept.into_iter().for_each(|row| out.push_str(row));
        }
    }
    out.into_bytes()
}

fn unquote_csv(field: &str) -> String {
    match field.strip_prefix('"').and_then(|f| f.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => field.to_string(),
    }
}

fn msgpack(
    body: &[u8],
    statements: &[usize],
    visible: &dyn Fn(&str) -> bool,
) -> Result<Vec<u8>, ProxyError> {
    use rmpv::Value as M;
    fn get<'v>(map: &'v mut M, key: &str) -> Option<&'v mut M> {
        match map {
            M::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
    let invalid = |_| ProxyError::Unfilterable("invalid MessagePack");
    let mut input = body;
    let mut out = Vec::with_capacity(body.len());
    while !input.is_empty() {
        let mut value = rmpv::decode::read_value(&mut input).map_err(invalid)?;
        if let Some(M::Array(results)) = get(&mut value, "results") {
            for result in results {
                let id = get(result, "statement_id").and_then(|v| v.as_u64());
                if !id.is_some_and(|id| statements.contains(&(id as usize))) {
                    continue;
                }
                let Some(M::Array(series)) = get(result, "series") else {
                    continue;
                };
                for series in series {
                    let name = get(series, "name").and_then(|v| v.as_str().map(str::to_string));
                    if name.as_deref() != Some("databases") {
                        continue;
                    }
                    if let Some(M::Array(rows)) = get(series, "values") {
                        rows.retain(|row| {
                            row.as_array()
                                .and_then(|r| r.first())
                                .and_then(|v| v.as_str())
                                .is_some_and(visible)
                        });
                    }
                }
            }
        }
        rmpv::encode::write_value(&mut out, &value)
            .map_err(|_| ProxyError::Unfilterable("invalid MessagePack"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_a(db: &str) -> bool {
        db.starts_with('a')
    }

    #[test]
    fn json_keeps_its_shape_and_other_statements() {
        let body = concat!(
            r#"{"results":[{"statement_id":0,"series":[{"name":"databases","columns":["name"],"values":[["a1"],["b1"],["a2"]]}]},"#,
            r#"{"statement_id":1,"series":[{"name":"databases","columns":["name"],"values":[["b2"]]}]}]}"#,
            "\n"
        );
        let out = filter(body.as_bytes(), "application/json", &[0], only_a, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"results":[{"statement_id":0,"series":[{"name":"databases","columns":["name"],"values":[["a1"],["a2"]]}]},"#,
                r#"{"statement_id":1,"series":[{"name":"databases","columns":["name"],"values":[["b2"]]}]}]}"#,
                "\n"
            )
        );
        let pretty = "{\n    \"results\": [\n        {\n            \"statement_id\": 0\n        }\n    ]\n}\n";
        let out = filter(pretty.as_bytes(), "application/json", &[0], only_a, true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), pretty);
    }

    #[test]
    fn csv_rows_of_the_databases_block_only() {
        let body = "name,tags,name\ndatabases,,a1\ndatabases,,b1\ndatabases,,\"a,\"\"x\"\n\nname,tags,time,v\ndatabases,,1,b1\n";
        let out = filter(body.as_bytes(), "text/csv", &[0], only_a, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name,tags,name\ndatabases,,a1\ndatabases,,\"a,\"\"x\"\n\nname,tags,time,v\ndatabases,,1,b1\n"
        );
    }

    #[test]
    fn msgpack_round_trips_what_it_keeps() {
        use rmpv::Value as M;
        let row = |db: &str| M::Array(vec![M::from(db)]);
        let answer = |rows: Vec<M>| {
            M::Map(vec![(
                M::from("results"),
                M::Array(vec![M::Map(vec![
                    (M::from("statement_id"), M::from(0)),
                    (
                        M::from("series"),
                        M::Array(vec![M::Map(vec![
                            (M::from("name"), M::from("databases")),
                            (M::from("columns"), M::Array(vec![M::from("name")])),
                            (M::from("values"), M::Array(rows)),
                        ])]),
                    ),
                ])]),
            )])
        };
        let mut body = vec![];
        rmpv::encode::write_value(&mut body, &answer(vec![row("a1"), row("b1")])).unwrap();
        let mut expected = vec![];
        rmpv::encode::write_value(&mut expected, &answer(vec![row("a1")])).unwrap();
        let out = filter(&body, "application/x-msgpack", &[0], only_a, false).unwrap();
        assert_eq!(out, expected);
        assert!(filter(b"\x92\x01", "application/x-msgpack", &[0], only_a, false).is_err());
    }
}

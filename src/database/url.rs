//! Splits `database_url` into what tokio-postgres parses and the `ssl*` parameters walhook
//! handles itself ([`TlsParams`]), in both libpq forms: a URL
//! (`postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem`) and key=value pairs
//! (`host=h dbname=db sslmode=verify-full sslrootcert='/ca.pem'`).

use super::DatabaseError;
use super::tls::{SslMode, TlsParams};

/// `database_url` with the `ssl*` parameters taken out, and those parameters.
pub fn split(url: &str) -> Result<(String, TlsParams), DatabaseError> {
    let mut params = TlsParams::default();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url, &mut params)?
    } else {
        split_pairs(url, &mut params)?
    };
    Ok((rest, params))
}

/// Takes one parameter if it is ours; `false` when tokio-postgres should see it.
fn take(params: &mut TlsParams, key: &str, value: String) -> Result<bool, DatabaseError> {
    match key {
        "sslmode" => {
            let mode = SslMode::parse(&value).ok_or_else(|| DatabaseError::Parameter {
                parameter: "sslmode",
                message: format!(
                    "{value:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ),
            })?;
            params.mode = Some(mode);
        }
        "sslrootcert" => params.root_cert = Some(value),
        "sslcert" => params.cert = Some(value),
        "sslkey" => params.key = Some(value),
        _ => return Ok(false),
    }
    Ok(true)
}

fn split_url(url: &str, params: &mut TlsParams) -> Result<String, DatabaseError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => return Ok(url.to_owned()),
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !take(params, &percent_decode(key)?, percent_decode(value)?)? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

fn percent_decode(text: &str) -> Result<String, DatabaseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| DatabaseError::Parse(format!("bad percent-escape in {text:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DatabaseError::Parse(format!("{text:?} is not UTF-8")))
}

/// libpq key=value syntax: `key = value`, values bare or single-quoted, `\` escapes.
fn split_pairs(text: &str, params: &mut TlsParams) -> Result<String, DatabaseError> {
    let mut chars = text.chars().peekable();
    let mut kept = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(DatabaseError::Parse(format!(
                "missing \"=\" after {key:?} in the connection string"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(DatabaseError::Parse(format!(
                            "unterminated quoted value of {key:?}"
                        )));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if !take(params, &key, value.clone())? {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok(kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_taken_out() {
        let (rest, params) = split(
            "postgres://u:p@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&sslcert=/c&sslkey=/k",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=x");
        assert_eq!(
            params,
            TlsParams {
                mode: Some(SslMode::VerifyFull),
                root_cert: Some("/tmp/ca.pem".into()),
                cert: Some("/c".into()),
                key: Some("/k".into()),
            }
        );
        let (rest, params) = split("postgresql://h/db?sslmode=disable").unwrap();
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(params.mode, Some(SslMode::Disable));
        assert_eq!(split("postgres://h/db").unwrap().0, "postgres://h/db");
    }

    #[test]
    fn key_value_parameters_are_taken_out() {
        let (rest, params) = split(
            "host=h  dbname = 'my db' password='it\\'s' sslmode=verify-ca sslrootcert='/a b/ca.pem'",
        )
        .unwrap();
        assert_eq!(rest, "host='h' dbname='my db' password='it\\'s'");
        assert_eq!(params.mode, Some(SslMode::VerifyCa));
        assert_eq!(params.root_cert.as_deref(), Some("/a b/ca.pem"));
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_dbname(), Some("my db"));
        assert_eq!(parsed.get_password(), Some(&b"it's"[..]));
    }

    #[test]
    fn a_bad_sslmode_is_named() {
        let err = split("postgres://h/db?sslmode=verify")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "database_url: sslmode: \"verify\" is not one of disable, prefer, require, verify-ca, verify-full"
        );
        let err = split("host=h sslmode").unwrap_err().to_string();
        assert!(err.contains("missing \"=\" after \"sslmode\""), "{err}");
    }
}

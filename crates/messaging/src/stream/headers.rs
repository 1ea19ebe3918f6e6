//! NATS header blocks (`NATS/1.0[ status]\r\nName: value\r\n…\r\n\r\n`), read the way
//! nats-server reads the `Nats-*` headers JetStream acts on: names match exactly, the first
//! occurrence wins, values are trimmed.

/// The value of header `name` in `block`, if present.
pub fn get<'a>(block: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(block).ok()?;
    let mut lines = text.split("\r\n");
    // The version line first.
    lines.next().filter(|l| l.starts_with("NATS/1.0"))?;
    lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// A header block with `pairs` after the version line (and `status`, e.g. `404 Message Not
/// Found`, on it when given).
pub fn block(status: Option<&str>, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = String::from("NATS/1.0");
    if let Some(s) = status {
        b.push(' ');
        b.push_str(s);
    }
    b.push_str("\r\n");
    for (n, v) in pairs {
        b.push_str(n);
        b.push_str(": ");
        b.push_str(v);
        b.push_str("\r\n");
    }
    b.push_str("\r\n");
    b.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_as_nats_server_reads_them() {
        let b = b"NATS/1.0\r\nNats-Msg-Id:  a1 \r\nX: 1\r\nX: 2\r\n\r\n";
        assert_eq!(get(b, "Nats-Msg-Id"), Some("a1"));
        assert_eq!(get(b, "X"), Some("1"));
        assert_eq!(get(b, "nats-msg-id"), None, "names match exactly");
        assert_eq!(get(b"", "X"), None);
        assert_eq!(get(b"HTTP/1.1\r\nX: 1\r\n\r\n", "X"), None);
        assert_eq!(
            block(Some("404 Message Not Found"), &[]),
            b"NATS/1.0 404 Message Not Found\r\n\r\n"
        );
        let b = block(None, &[("Nats-Stream", "S"), ("Nats-Sequence", "4")]);
        assert_eq!(get(&b, "Nats-Sequence"), Some("4"));
    }
}

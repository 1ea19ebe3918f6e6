//! `berth kv txn`: reads a transaction in etcdctl's syntax from stdin (compares, a blank line,
//! success ops, a blank line, failure ops) and prints SUCCESS/FAILURE and each op's result.
//!
//! Compares look like `mod("k") > "0"`, `value("k") = "v"` (targets `ver|version`, `c|create`,
//! `m|mod`, `val|value`, `lease` in hex; ops `=`, `!=`, `<`, `>`). Ops are `put`, `get` and
//! `del` lines taking the same flags as the commands, with shell-like quoting.

use std::io::{self, BufRead, Write};

use anyhow::{anyhow, bail, Result};
use berth_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, response_op, Compare, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use clap::Parser;
use serde_json::Value;

use super::{del::DelArgs, get::GetArgs, put::PutArgs};
use crate::cli::output::json::{opt_header, Obj};
use crate::cli::output::Render;
use crate::cli::Ctx;

/// Arguments of `kv txn`.
#[derive(clap::Args, Debug)]
pub struct TxnArgs {
    /// Prompt for each section (compares, success ops, failure ops).
    #[arg(short, long)]
    pub interactive: bool,
}

/// Runs `kv txn`.
pub async fn run(ctx: &mut Ctx, args: TxnArgs) -> Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let req = {
        let out = &mut ctx.out;
        let mut prompt = |p: &str| {
            if args.interactive {
                out.line(p)
            } else {
                Ok(())
            }
        };
        parse_txn(&mut input, &mut prompt)?
    };
    let mut kv = ctx.conn.kv().await?;
    let resp = ctx.conn.call(kv.txn(req)).await?;
    ctx.out.print(&resp)
}

/// `kv txn`: SUCCESS or FAILURE, then each operation's result after a blank line, printed as
/// its own command prints it (no table: simple text).
impl Render for TxnResponse {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "{}",
            if self.succeeded { "SUCCESS" } else { "FAILURE" }
        )?;
        for op in &self.responses {
            writeln!(out)?;
            match &op.response {
                Some(response_op::Response::ResponsePut(p)) => p.simple(out)?,
                Some(response_op::Response::ResponseRange(g)) => g.simple(out)?,
                Some(response_op::Response::ResponseDeleteRange(d)) => d.simple(out)?,
                Some(response_op::Response::ResponseTxn(t)) => t.simple(out)?,
                None => writeln!(out, "unexpected empty response")?,
            }
        }
        Ok(())
    }

    /// Each result is wrapped as `{"Response":{"ResponsePut":{..}}}` like Go's oneof.
    fn json(&self) -> Value {
        Obj::new()
            .opt("header", opt_header(self.header.as_ref()))
            .flag("succeeded", self.succeeded)
            .list("responses", self.responses.iter().map(op_json).collect())
            .build()
    }
}

fn op_json(op: &ResponseOp) -> Value {
    let inner = match &op.response {
        Some(response_op::Response::ResponseRange(r)) => {
            Obj::new().always("ResponseRange", r.json())
        }
        Some(response_op::Response::ResponsePut(r)) => Obj::new().always("ResponsePut", r.json()),
        Some(response_op::Response::ResponseDeleteRange(r)) => {
            Obj::new().always("ResponseDeleteRange", r.json())
        }
        Some(response_op::Response::ResponseTxn(r)) => Obj::new().always("ResponseTxn", r.json()),
        None => Obj::new(),
    };
    Obj::new().always("Response", inner.build()).build()
}

/// Reads a whole transaction. A blank line (or end of input) closes each section;
/// `prompt` is called before each section with etcdctl's interactive prompt text.
pub fn parse_txn(
    input: &mut impl BufRead,
    prompt: &mut impl FnMut(&str) -> Result<()>,
) -> Result<TxnRequest> {
    prompt("compares:")?;
    let compare = read_section(input)?
        .iter()
        .map(|l| parse_compare(l))
        .collect::<Result<Vec<_>>>()?;
    prompt("success requests (get, put, del):")?;
    let success = read_section(input)?
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<Vec<_>>>()?;
    prompt("failure requests (get, put, del):")?;
    let failure = read_section(input)?
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<Vec<_>>>()?;
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

/// Trimmed lines up to the next blank line or end of input.
fn read_section(input: &mut impl BufRead) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(lines);
        }
        let line = line.trim();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line.to_string());
    }
}

/// Parses one compare line, e.g. `mod("k") > "0"` or `value("k") = "v"`.
pub fn parse_compare(line: &str) -> Result<Compare> {
    let malformed = || anyhow!("malformed comparison: {line}");
    let (target, rest) = line.split_once('(').ok_or_else(malformed)?;
    let (key, rest) = go_unquote(rest.trim_start()).map_err(|_| malformed())?;
    let rest = rest
        .trim_start()
        .strip_prefix(')')
        .ok_or_else(malformed)?
        .trim_start();
    let op_len = rest
        .find(|c: char| !matches!(c, '=' | '!' | '<' | '>'))
        .unwrap_or(rest.len());
    let (op, rest) = rest.split_at(op_len);
    let (val, rest) = go_unquote(rest.trim_start()).map_err(|_| malformed())?;
    if !rest.trim().is_empty() {
        return Err(malformed());
    }
    let result = match op {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        _ => bail!("malformed comparison: {line} (unknown operator {op:?})"),
    };
    let invalid = |e: &dyn std::fmt::Display| anyhow!("invalid txn compare request: {line} ({e})");
    let int = |v: &[u8]| -> Result<i64> {
        let s = std::str::from_utf8(v).map_err(|e| invalid(&e))?;
        s.parse::<i64>().map_err(|e| invalid(&e))
    };
    let (target, union) = match target.trim() {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(int(&val)?)),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(int(&val)?),
        ),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(int(&val)?)),
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(val)),
        "lease" => {
            let s = std::str::from_utf8(&val).map_err(|e| invalid(&e))?;
            let id = crate::cli::lease::parse_lease_id(s).map_err(|e| invalid(&e))?;
            (CompareTarget::Lease, TargetUnion::Lease(id))
        }
        other => bail!("malformed comparison: {line} (unknown target {other})"),
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(union),
    })
}

/// A `put`, `get` or `del` line, parsed with the same flags as the commands themselves.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
enum OpLine {
    Put(PutArgs),
    Get(GetArgs),
    Del(DelArgs),
}

/// Parses one operation line, e.g. `put k "some value" --prev-kv`.
pub fn parse_op(line: &str) -> Result<RequestOp> {
    let invalid = || anyhow!("invalid txn request: {line}");
    let args = argify(line).map_err(|_| invalid())?;
    let op = OpLine::try_parse_from(&args).map_err(|_| invalid())?;
    let request = match op {
        OpLine::Put(a) => request_op::Request::RequestPut(
            a.to_request(|| bail!("put needs a value inside a txn"))
                .map_err(|e| anyhow!("invalid txn request: {line} ({e})"))?,
        ),
        OpLine::Get(a) => request_op::Request::RequestRange(
            a.to_request()
                .map_err(|e| anyhow!("invalid txn request: {line} ({e})"))?,
        ),
        OpLine::Del(a) => request_op::Request::RequestDeleteRange(
            a.to_request()
                .map_err(|e| anyhow!("invalid txn request: {line} ({e})"))?,
        ),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

/// Splits a line into words as etcdctl does: whitespace separates, `"..."` is a Go-quoted
/// string (escapes allowed) and `'...'` is taken literally.
pub fn argify(line: &str) -> Result<Vec<String>> {
    let mut args = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if rest.starts_with('"') {
            let (bytes, after) = go_unquote(rest)?;
            args.push(String::from_utf8(bytes).map_err(|_| anyhow!("argument is not UTF-8"))?);
            rest = after;
        } else if let Some(body) = rest.strip_prefix('\'') {
            let end = body
                .find('\'')
                .ok_or_else(|| anyhow!("unterminated quote"))?;
            args.push(body[..end].to_string());
            rest = &body[end + 1..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            args.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(args)
}

/// Reads a Go string literal (`"..."` with escapes, or `` `...` `` raw) at the start of `s`,
/// returning its bytes and the text after it.
pub fn go_unquote(s: &str) -> Result<(Vec<u8>, &str)> {
    if let Some(body) = s.strip_prefix('`') {
        let end = body
            .find('`')
            .ok_or_else(|| anyhow!("unterminated raw string"))?;
        return Ok((body.as_bytes()[..end].to_vec(), &body[end + 1..]));
    }
    let body = s
        .strip_prefix('"')
        .ok_or_else(|| anyhow!("expected a quoted string"))?;
    let mut out = Vec::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => {
                let (_, e) = chars.next().ok_or_else(|| anyhow!("unterminated string"))?;
                let mut hex = |n: usize| -> Result<u32> {
                    let digits: String = chars.by_ref().take(n).map(|(_, c)| c).collect();
                    if digits.len() != n {
                        bail!("short escape");
                    }
                    u32::from_str_radix(&digits, 16).map_err(|_| anyhow!("bad escape"))
                };
                match e {
                    'a' => out.push(7),
                    'b' => out.push(8),
                    'f' => out.push(12),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'v' => out.push(11),
                    '\\' => out.push(b'\\'),
                    '"' => out.push(b'"'),
                    '\'' => out.push(b'\''),
                    'x' => out.push(u8::try_from(hex(2)?)?),
                    'u' | 'U' => {
                        let n = if e == 'u' { 4 } else { 8 };
                        let ch = char::from_u32(hex(n)?).ok_or_else(|| anyhow!("bad escape"))?;
                        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    '0'..='7' => {
                        let rest: String = chars.by_ref().take(2).map(|(_, c)| c).collect();
                        let v = u32::from_str_radix(&format!("{e}{rest}"), 8)
                            .map_err(|_| anyhow!("bad escape"))?;
                        out.push(u8::try_from(v)?);
                    }
                    _ => bail!("unknown escape \\{e}"),
                }
            }
            '\n' => bail!("newline in string"),
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    bail!("unterminated string")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::kv::pair;
    use crate::cli::output::json::test_header;
    use crate::cli::output::{printed, Format};
    use berth_proto::etcdserverpb::range_request::SortOrder;
    use berth_proto::etcdserverpb::{
        DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader,
    };

    fn no_prompt(_: &str) -> Result<()> {
        Ok(())
    }

    #[test]
    fn parses_compares() {
        let c = parse_compare(r#"mod("key1") > "0""#).ok();
        assert_eq!(
            c,
            Some(Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Mod as i32,
                key: b"key1".to_vec(),
                range_end: vec![],
                target_union: Some(TargetUnion::ModRevision(0)),
            })
        );
        let c = parse_compare(r#"value("k") = "a \"b\"""#).ok();
        assert_eq!(
            c.and_then(|c| c.target_union),
            Some(TargetUnion::Value(br#"a "b""#.to_vec()))
        );
        let c = parse_compare(r#"ver("k") != "3""#).ok();
        assert_eq!(c.map(|c| c.result), Some(CompareResult::NotEqual as i32));
        let c = parse_compare(r#"c("k")<"5""#).ok();
        assert_eq!(
            c.and_then(|c| c.target_union),
            Some(TargetUnion::CreateRevision(5))
        );
        let c = parse_compare(r#"lease("k") = "694d71ddacfda227""#).ok();
        assert_eq!(
            c.and_then(|c| c.target_union),
            Some(TargetUnion::Lease(0x694d71ddacfda227))
        );
    }

    #[test]
    fn rejects_bad_compares() {
        let err = |l: &str| parse_compare(l).err().map(|e| e.to_string());
        assert_eq!(err("bogus"), Some("malformed comparison: bogus".into()));
        assert!(err(r#"mod("k1") >"#).is_some());
        assert!(err(r#"mod("k1") >> "1""#).is_some());
        assert!(err(r#"nope("k1") = "1""#).is_some());
        assert_eq!(
            err(r#"ver("k1") = "x""#).map(|e| e.starts_with("invalid txn compare request")),
            Some(true)
        );
        assert!(err(r#"mod("k1") = "1" extra"#).is_some());
    }

    #[test]
    fn parses_ops_with_flags_and_quotes() {
        let op = parse_op(r#"put "a b" 'c d' --prev-kv"#)
            .ok()
            .and_then(|o| o.request);
        match op {
            Some(request_op::Request::RequestPut(p)) => {
                assert_eq!(
                    (p.key.as_slice(), p.value.as_slice()),
                    (&b"a b"[..], &b"c d"[..])
                );
                assert!(p.prev_kv);
            }
            other => panic!("unexpected {other:?}"),
        }
        match parse_op("get k --prefix --order DESCEND")
            .ok()
            .and_then(|o| o.request)
        {
            Some(request_op::Request::RequestRange(r)) => {
                assert_eq!(r.range_end, b"l".to_vec());
                assert_eq!(r.sort_order, SortOrder::Descend as i32);
            }
            other => panic!("unexpected {other:?}"),
        }
        match parse_op("del k z").ok().and_then(|o| o.request) {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                assert_eq!(d.range_end, b"z".to_vec())
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_op("put k").is_err());
        assert!(parse_op("frob k").is_err());
        assert!(parse_op("get k --bogus").is_err());
    }

    #[test]
    fn argify_splits_like_etcdctl() {
        assert_eq!(
            argify(r#"put k "v \"1\"\n" 'x y'  z"#).ok(),
            Some(vec![
                "put".to_string(),
                "k".into(),
                "v \"1\"\n".into(),
                "x y".into(),
                "z".into()
            ])
        );
        assert!(argify(r#"put "k"#).is_err());
    }

    #[test]
    fn reads_sections_separated_by_blank_lines() {
        let input = "mod(\"k1\") > \"0\"\nvalue(\"k2\") = \"v2\"\n\nput k3 v3\nget k1\ndel k2\n\nput k9 v9\n";
        let mut prompts = Vec::new();
        let txn = parse_txn(&mut input.as_bytes(), &mut |p: &str| {
            prompts.push(p.to_string());
            Ok(())
        });
        let txn = txn.ok();
        assert_eq!(
            txn.as_ref()
                .map(|t| (t.compare.len(), t.success.len(), t.failure.len())),
            Some((2, 3, 1))
        );
        assert_eq!(prompts.len(), 3);
        let empty = parse_txn(&mut "\n\n\n".as_bytes(), &mut no_prompt).ok();
        assert_eq!(empty, Some(TxnRequest::default()));
        assert!(parse_txn(&mut "bogus\n\n\n".as_bytes(), &mut no_prompt).is_err());
    }

    #[test]
    fn go_strings() {
        assert_eq!(
            go_unquote(r#""a\x41\101\u00e9" rest"#).ok(),
            Some(("aAAé".as_bytes().to_vec(), " rest"))
        );
        assert_eq!(
            go_unquote("`raw\\n`x").ok(),
            Some((b"raw\\n".to_vec(), "x"))
        );
        assert!(go_unquote(r#""open"#).is_err());
        assert!(go_unquote("plain").is_err());
    }

    #[test]
    fn simple_txn_matches_etcdctl() {
        let r = TxnResponse {
            header: None,
            succeeded: false,
            responses: vec![
                ResponseOp {
                    response: Some(response_op::Response::ResponseRange(RangeResponse {
                        kvs: vec![pair("k1", "v1"), pair("k3", "v3")],
                        ..Default::default()
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponsePut(PutResponse::default())),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseDeleteRange(
                        DeleteRangeResponse {
                            deleted: 2,
                            ..Default::default()
                        },
                    )),
                },
            ],
        };
        let out = printed(Format::Simple, &r);
        assert_eq!(out, "FAILURE\n\nk1\nv1\nk3\nv3\n\nOK\n\n2\n");
    }

    // Expected string captured from etcdctl 3.4 against etcd 3.4.
    #[test]
    fn txn_wraps_oneof_like_go() {
        let r = TxnResponse {
            header: test_header(13),
            succeeded: true,
            responses: vec![
                ResponseOp {
                    response: Some(response_op::Response::ResponsePut(PutResponse {
                        header: Some(ResponseHeader {
                            revision: 13,
                            ..Default::default()
                        }),
                        prev_kv: None,
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseDeleteRange(
                        DeleteRangeResponse {
                            header: Some(ResponseHeader {
                                revision: 13,
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    )),
                },
            ],
        };
        assert_eq!(
            r.json().to_string(),
            r#"{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":13,"raft_term":2},"succeeded":true,"responses":[{"Response":{"ResponsePut":{"header":{"revision":13}}}},{"Response":{"ResponseDeleteRange":{"header":{"revision":13}}}}]}"#
        );
    }
}

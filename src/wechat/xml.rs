//! The flat `<xml><k>v</k>…</xml>` documents of API v2 (§4.3 steps 1–2).

use quick_xml::Reader;
use quick_xml::events::Event;

use super::Params;

/// Legitimate notifies and responses are a few KB; anything bigger is refused unread.
pub const MAX_BODY: usize = 64 * 1024;

pub const SUCCESS_REPLY: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    #[error("body larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("DOCTYPE/ENTITY declarations are refused")]
    Doctype,
    #[error("nested element inside an <xml> child")]
    Nested,
    #[error("root element is not the expected one (<xml>, or <root> inside req_info)")]
    NotXmlRoot,
    #[error("malformed XML: {0}")]
    Malformed(String),
}

/// Whether `<!DOCTYPE` or `<!ENTITY` (any case) occurs anywhere, even inside CDATA: one pass
/// over the `<`s, as every notification is checked before it is parsed.
fn declares_dtd(body: &[u8]) -> bool {
    let mut rest = body;
    while let Some(i) = rest.iter().position(|&b| b == b'<') {
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix(b"!") {
            let starts = |kw: &[u8]| {
                after
                    .get(..kw.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(kw))
            };
            if starts(b"DOCTYPE") || starts(b"ENTITY") {
                return true;
            }
        }
    }
    false
}

/// Children of `<xml>` as a map; CDATA and text are concatenated, empty elements give "".
/// Refuses DTDs before parsing at all (XXE / entity expansion, §9.4) and duplicate keys
/// (one copy could be signed while the other is used).
pub fn decode(body: &[u8]) -> Result<Params, XmlError> {
    decode_root(body, "xml")
}

/// [`decode`] for a flat document under another root element: the decrypted `req_info` of a
/// refund notification is rooted at `<root>` (wechatpay-next.md §3.2).
pub fn decode_root(body: &[u8], root: &str) -> Result<Params, XmlError> {
    if body.len() > MAX_BODY {
        return Err(XmlError::TooLarge);
    }
    if declares_dtd(body) {
        return Err(XmlError::Doctype);
    }
    let text = std::str::from_utf8(body).map_err(|_| XmlError::Malformed("not UTF-8".into()))?;
    // Some stacks prepend a BOM; it is not part of the document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader::from_str(text);
    let mut params = Params::new();
    let mut depth = 0usize;
    let mut root_done = false;
    let mut seen_root = false;
    let mut current: Option<(String, String)> = None;

    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        match event {
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(_) | Event::Empty(_) if root_done => {
                return Err(XmlError::Malformed("content after the root element".into()));
            }
            Event::Start(start) => {
                let name = element_name(start.name().as_ref())?;
                match depth {
                    0 => {
                        if name != root {
                            return Err(XmlError::NotXmlRoot);
                        }
                        seen_root = true;
                    }
                    1 => current = Some((name, String::new())),
                    _ => return Err(XmlError::Nested),
                }
                depth += 1;
            }
            Event::Empty(start) => {
                let name = element_name(start.name().as_ref())?;
                match depth {
                    0 => {
                        if name != root {
                            return Err(XmlError::NotXmlRoot);
                        }
                        seen_root = true;
                        root_done = true;
                    }
                    1 => insert(&mut params, name, String::new())?,
                    _ => return Err(XmlError::Nested),
                }
            }
            Event::End(_) => {
                // quick-xml already checks that end names match their start.
                depth = depth.saturating_sub(1);
                match depth {
                    0 => root_done = true,
                    1 => {
                        if let Some((name, value)) = current.take() {
                            insert(&mut params, name, value)?;
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                if depth == 2 {
                    if let Some((_, value)) = current.as_mut() {
                        value.push_str(&content);
                    }
                } else if !content.chars().all(|c| c.is_ascii_whitespace()) {
                    // Indentation between elements is fine, stray text is not.
                    return Err(XmlError::Malformed("text outside an element".into()));
                }
            }
            Event::CData(c) => {
                if depth != 2 {
                    return Err(XmlError::Malformed("CDATA outside an element".into()));
                }
                if let Some((_, value)) = current.as_mut() {
                    value.push_str(&c.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                if depth != 2 {
                    return Err(XmlError::Malformed("reference outside an element".into()));
                }
                let resolved = resolve_ref(&r)?;
                if let Some((_, value)) = current.as_mut() {
                    value.push(resolved);
                }
            }
        }
    }
    if !seen_root || !root_done {
        return Err(XmlError::Malformed("missing or unterminated <xml>".into()));
    }
    Ok(params)
}

fn element_name(raw: &str) -> Result<String, XmlError> {
    if raw.is_empty() {
        return Err(XmlError::Malformed("empty element name".into()));
    }
    Ok(raw.to_owned())
}

fn insert(params: &mut Params, name: String, value: String) -> Result<(), XmlError> {
    if params.contains_key(&name) {
        return Err(XmlError::Malformed(format!("duplicate element <{name}>")));
    }
    params.insert(name, value);
    Ok(())
}

/// Only the five predefined entities and character references exist without a DTD.
fn resolve_ref(r: &quick_xml::events::BytesRef<'_>) -> Result<char, XmlError> {
    if r.is_char_ref() {
        return match r.resolve_char_ref() {
            Ok(Some(c)) => Ok(c),
            _ => Err(XmlError::Malformed("bad character reference".into())),
        };
    }
    match &**r {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        other => Err(XmlError::Malformed(format!("undefined entity &{other};"))),
    }
}

/// `<xml><k><![CDATA[v]]></k>…</xml>` in key order. Keys are our own field names and are
/// written as-is; a `]]>` inside a value is split across two CDATA sections.
pub fn encode(params: &Params) -> String {
    encode_root(params, "xml")
}

/// [`encode`] under another root element (the `<root>` plaintext of a refund `req_info`).
pub fn encode_root(params: &Params, root: &str) -> String {
    let mut out = format!("<{root}>");
    for (k, v) in params {
        out.push('<');
        out.push_str(k);
        out.push('>');
        push_cdata(&mut out, v);
        out.push_str("</");
        out.push_str(k);
        out.push('>');
    }
    out.push_str("</");
    out.push_str(root);
    out.push('>');
    out
}

fn push_cdata(out: &mut String, v: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&v.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

/// The FAIL reply of §4.4, same shape as [`SUCCESS_REPLY`].
pub fn fail_reply(msg: &str) -> String {
    let mut out = String::from("<xml><return_code><![CDATA[FAIL]]></return_code><return_msg>");
    push_cdata(&mut out, msg);
    out.push_str("</return_msg></xml>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_chinese_and_cdata_end() {
        let mut p = Params::new();
        p.insert("attach".into(), "算力充值 ]]> <b>&amp;".into());
        p.insert("body".into(), "coinpay-算力".into());
        p.insert("empty".into(), String::new());
        p.insert("total_fee".into(), "100".into());
        let xml = encode(&p);
        assert!(xml.starts_with("<xml><attach><![CDATA["));
        assert_eq!(decode(xml.as_bytes()), Ok(p));
    }

    #[test]
    fn bare_numbers_empty_elements_and_whitespace() {
        let body = "<?xml version=\"1.0\"?>\n<xml>\n  <total_fee>100</total_fee>\n  <device_info><![CDATA[]]></device_info>\n  <attach/>\n  <x></x>\n  <msg>a &amp; b &#x4E2D;</msg>\n</xml>\n";
        let p = decode(body.as_bytes()).expect("decodes");
        assert_eq!(p.get("total_fee").map(String::as_str), Some("100"));
        assert_eq!(p.get("device_info").map(String::as_str), Some(""));
        assert_eq!(p.get("attach").map(String::as_str), Some(""));
        assert_eq!(p.get("x").map(String::as_str), Some(""));
        assert_eq!(p.get("msg").map(String::as_str), Some("a & b 中"));
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn doctype_and_entity_refused() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><a>&xxe;</a></xml>"#;
        assert_eq!(decode(xxe.as_bytes()), Err(XmlError::Doctype));
        assert_eq!(
            decode(b"<xml><a>1</a></xml><!entity x 'y'>"),
            Err(XmlError::Doctype)
        );
        assert_eq!(decode(b"<!doctype xml><xml></xml>"), Err(XmlError::Doctype));
        assert_eq!(
            decode(b"<xml><a><![CDATA[<!DocType x>]]></a></xml>"),
            Err(XmlError::Doctype)
        );
        // CDATA and a truncated keyword are not declarations.
        assert!(decode(b"<xml><a><![CDATA[<!DOCTYP]]></a></xml>").is_ok());
        // Undefined entities without a DTD are malformed, never expanded.
        assert!(matches!(
            decode(b"<xml><a>&xxe;</a></xml>"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn nested_root_and_malformed() {
        assert_eq!(decode(b"<xml><a><b>1</b></a></xml>"), Err(XmlError::Nested));
        assert_eq!(decode(b"<xml><a><b/></a></xml>"), Err(XmlError::Nested));
        assert_eq!(decode(b"<root><a>1</a></root>"), Err(XmlError::NotXmlRoot));
        assert!(matches!(
            decode(b"<xml><a>1</b></xml>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"<xml><a>1</a>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(decode(b""), Err(XmlError::Malformed(_))));
        assert!(matches!(decode(b"success"), Err(XmlError::Malformed(_))));
        assert!(matches!(
            decode(b"<xml><a>1</a><a>2</a></xml>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"<xml><a>1</a></xml><xml></xml>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"<xml>\xff</xml>"),
            Err(XmlError::Malformed(_))
        ));
        assert_eq!(decode(b"<xml/>"), Ok(Params::new()));
        assert_eq!(
            decode("\u{feff}<xml><a>1</a></xml>".as_bytes()).map(|p| p.len()),
            Ok(1)
        );
    }

    #[test]
    fn other_root() {
        let mut p = Params::new();
        p.insert("refund_fee".into(), "100".into());
        let doc = encode_root(&p, "root");
        assert_eq!(doc, "<root><refund_fee><![CDATA[100]]></refund_fee></root>");
        assert_eq!(decode_root(doc.as_bytes(), "root"), Ok(p));
        assert_eq!(decode(doc.as_bytes()), Err(XmlError::NotXmlRoot));
        assert_eq!(
            decode_root(b"<xml><a>1</a></xml>", "root"),
            Err(XmlError::NotXmlRoot)
        );
    }

    #[test]
    fn too_large_refused() {
        let mut body = String::from("<xml><a>");
        body.push_str(&"x".repeat(MAX_BODY));
        body.push_str("</a></xml>");
        assert_eq!(decode(body.as_bytes()), Err(XmlError::TooLarge));
        let ok = format!("<xml><a>{}</a></xml>", "x".repeat(MAX_BODY - 100));
        assert!(decode(ok.as_bytes()).is_ok());
    }

    #[test]
    fn replies_byte_exact() {
        assert_eq!(
            SUCCESS_REPLY,
            "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
        );
        assert_eq!(
            fail_reply("签名失败"),
            "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[签名失败]]></return_msg></xml>"
        );
        let p = decode(SUCCESS_REPLY.as_bytes()).expect("decodes");
        assert_eq!(p.get("return_code").map(String::as_str), Some("SUCCESS"));
        let f = decode(fail_reply("x]]>y").as_bytes()).expect("decodes");
        assert_eq!(f.get("return_msg").map(String::as_str), Some("x]]>y"));
    }
}

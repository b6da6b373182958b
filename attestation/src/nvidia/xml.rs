//! A small owned XML tree (parsed with `quick-xml`) and Canonical XML 1.1
//! (W3C, inclusive, without comments) of an element subtree, as XMLDSig needs
//! for NVIDIA's signed reference integrity manifests.
//!
//! Scope: elements, attributes, namespace declarations and text (CDATA as
//! text). DOCTYPE is refused (no entity expansion); comments and processing
//! instructions are dropped, as canonicalization without comments does. Not
//! handled: inheritance of `xml:*` attributes into a subset's apex (RIMs carry
//! none; one present is an error).

use crate::Error;
use quick_xml::events::{BytesStart, Event};
use std::collections::BTreeMap;

const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Qualified name as written (`prefix:local` or `local`).
    pub name: String,
    /// Namespace declarations on this element: prefix ("" for default) to URI.
    pub ns_decls: Vec<(String, String)>,
    /// Other attributes: qualified name as written, normalized value.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// Namespaces in scope: prefix ("" for default) to URI.
pub type Scope = BTreeMap<String, String>;

fn split(qname: &str) -> (&str, &str) {
    qname.split_once(':').unwrap_or(("", qname))
}

impl Element {
    pub fn local_name(&self) -> &str {
        split(&self.name).1
    }

    /// The scope inside this element, given the scope around it.
    pub fn scope(&self, outer: &Scope) -> Scope {
        let mut s = outer.clone();
        for (p, u) in &self.ns_decls {
            s.insert(p.clone(), u.clone());
        }
        s
    }

    /// Namespace URI of this element in `scope` (its own scope).
    pub fn namespace<'a>(&self, scope: &'a Scope) -> &'a str {
        scope.get(split(&self.name).0).map_or("", String::as_str)
    }

    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| split(n).1 == local)
            .map(|(_, v)| v.as_str())
    }

    pub fn child_elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element with this local name.
    pub fn child(&self, local: &str) -> Option<&Element> {
        self.child_elements().find(|e| e.local_name() == local)
    }

    /// Concatenated text content of direct text children.
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|c| match c {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }
}

fn xml_err(e: impl std::fmt::Display) -> Error {
    Error::Parse(format!("XML: {e}"))
}

fn element(start: &BytesStart) -> Result<Element, Error> {
    let name = std::str::from_utf8(start.name().as_ref())
        .map_err(xml_err)?
        .to_string();
    let mut ns_decls = Vec::new();
    let mut attrs = Vec::new();
    for a in start.attributes() {
        // Checked as they are read: the duplicate check on each attribute
        // is linear in the ones before it.
        if attrs.len() + ns_decls.len() >= MAX_ATTRIBUTES {
            return Err(xml_err(format!(
                "an element has more than {MAX_ATTRIBUTES} attributes"
            )));
        }
        let a = a.map_err(xml_err)?;
        let key = std::str::from_utf8(a.key.as_ref())
            .map_err(xml_err)?
            .to_string();
        // Attribute-value normalization: literal whitespace becomes a space.
        let raw = std::str::from_utf8(&a.value)
            .map_err(xml_err)?
            .replace(['\t', '\n', '\r'], " ");
        let value = quick_xml::escape::unescape(&raw)
            .map_err(xml_err)?
            .into_owned();
        if key == "xmlns" {
            ns_decls.push((String::new(), value));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            ns_decls.push((p.to_string(), value));
        } else {
            if key.starts_with("xml:") {
                return Err(Error::NotImplemented(
                    "XML: xml:* attributes in a signed manifest".into(),
                ));
            }
            attrs.push((key, value));
        }
    }
    Ok(Element {
        name,
        ns_decls,
        attrs,
        children: Vec::new(),
    })
}

/// Largest XML document accepted (NVIDIA's RIMs are tens of KiB).
pub const MAX_XML_LEN: usize = 4 << 20;
/// Most namespace declarations in one document: canonicalization copies the
/// in-scope namespaces per element, so this keeps its cost linear in the
/// document size.
pub const MAX_NS_DECLS: usize = 64;
/// Most attributes (namespace declarations included) on one element.
pub const MAX_ATTRIBUTES: usize = 256;

fn counted(e: Element, ns_decls: &mut usize) -> Result<Element, Error> {
    *ns_decls += e.ns_decls.len();
    if *ns_decls > MAX_NS_DECLS {
        return Err(xml_err(format!(
            "more than {MAX_NS_DECLS} namespace declarations"
        )));
    }
    Ok(e)
}

/// Parse a document to its root element.
pub fn parse(text: &[u8]) -> Result<Element, Error> {
    if text.len() > MAX_XML_LEN {
        return Err(xml_err(format!(
            "document is {} bytes, over the limit of {MAX_XML_LEN}",
            text.len()
        )));
    }
    let mut ns_decls = 0usize;
    let mut reader = quick_xml::Reader::from_reader(text);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let ev = reader.read_event().map_err(xml_err)?;
        match ev {
            Event::Start(s) => {
                if root.is_some() || stack.len() >= MAX_DEPTH {
                    return Err(xml_err(
                        "content after the root element or nesting too deep",
                    ));
                }
                stack.push(counted(element(&s)?, &mut ns_decls)?);
            }
            Event::Empty(s) => {
                if root.is_some() {
                    return Err(xml_err("content after the root element"));
                }
                let e = counted(element(&s)?, &mut ns_decls)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(e)),
                    None => root = Some(e),
                }
            }
            Event::End(end) => {
                let e = stack.pop().ok_or_else(|| xml_err("unbalanced end tag"))?;
                if end.name().as_ref() != e.name.as_bytes() {
                    return Err(xml_err(format!("end tag does not close <{}>", e.name)));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(e)),
                    None => root = Some(e),
                }
            }
            Event::Text(t) => {
                let raw = std::str::from_utf8(&t)
                    .map_err(xml_err)?
                    .replace("\r\n", "\n")
                    .replace('\r', "\n");
                let text = quick_xml::escape::unescape(&raw)
                    .map_err(xml_err)?
                    .into_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Text(text)),
                    None if text.trim().is_empty() => {}
                    None => return Err(xml_err("text outside the root element")),
                }
            }
            Event::CData(c) => {
                let text = std::str::from_utf8(&c).map_err(xml_err)?.to_string();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Text(text)),
                    None => return Err(xml_err("CDATA outside the root element")),
                }
            }
            Event::DocType(_) => return Err(xml_err("DOCTYPE not allowed")),
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(xml_err("document ends inside an element"));
    }
    root.ok_or_else(|| xml_err("no root element"))
}

fn escape_attr(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_text(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// Canonical XML 1.1 of `el` as the apex of a document subset whose
/// ancestors declare `outer`; child elements for which `omit` is true are
/// left out with their subtrees (the enveloped-signature transform).
pub fn canonicalize(
    el: &Element,
    outer: &Scope,
    omit: &dyn Fn(&Element, &Scope) -> bool,
) -> Result<String, Error> {
    let mut out = String::new();
    write_element(el, outer, None, omit, &mut out)?;
    Ok(out)
}

fn write_element(
    el: &Element,
    outer: &Scope,
    parent_rendered: Option<&Scope>,
    omit: &dyn Fn(&Element, &Scope) -> bool,
    out: &mut String,
) -> Result<(), Error> {
    let scope = el.scope(outer);
    out.push('<');
    out.push_str(&el.name);
    // Namespace nodes: all in scope at the apex; below it, those whose
    // value differs from the parent's (an empty default equals none).
    let empty = Scope::new();
    let parent = parent_rendered.unwrap_or(&empty);
    for (p, u) in &scope {
        let before = parent.get(p).map_or("", String::as_str);
        if u != before {
            out.push_str(if p.is_empty() { " xmlns" } else { " xmlns:" });
            out.push_str(p);
            out.push_str("=\"");
            escape_attr(u, out);
            out.push('"');
        }
    }
    let mut attrs: Vec<(&str, &str, &String, &String)> = Vec::with_capacity(el.attrs.len());
    for (q, v) in &el.attrs {
        let (p, local) = split(q);
        let uri = if p.is_empty() {
            ""
        } else {
            scope
                .get(p)
                .map(String::as_str)
                .ok_or_else(|| Error::Parse(format!("XML: undeclared prefix {p}")))?
        };
        attrs.push((uri, local, q, v));
    }
    attrs.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (_, _, q, v) in attrs {
        out.push(' ');
        out.push_str(q);
        out.push_str("=\"");
        escape_attr(v, out);
        out.push('"');
    }
    out.push('>');
    for c in &el.children {
        match c {
            Node::Text(t) => escape_text(t, out),
            Node::Element(child) if omit(child, &child.scope(&scope)) => {}
            Node::Element(child) => write_element(child, &scope, Some(&scope), omit, out)?,
        }
    }
    out.push_str("</");
    out.push_str(&el.name);
    out.push('>');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_declarations_beyond_the_limit_are_refused() {
        let decls: String = (0..=MAX_NS_DECLS)
            .map(|i| format!(" xmlns:p{i}=\"urn:{i}\""))
            .collect();
        let doc = format!("<r{decls}><a/><a/></r>");
        let err = parse(doc.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("namespace declarations"), "{err}");
        // At the limit it still parses.
        let decls: String = (1..=MAX_NS_DECLS)
            .map(|i| format!(" xmlns:p{i}=\"urn:{i}\""))
            .collect();
        parse(format!("<r{decls}><a/></r>").as_bytes()).unwrap();
    }

    #[test]
    fn too_many_attributes_and_oversized_documents_are_refused() {
        let attrs: String = (0..=MAX_ATTRIBUTES)
            .map(|i| format!(" a{i}=\"v\""))
            .collect();
        let err = parse(format!("<r{attrs}/>").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("attributes"), "{err}");
        let big = vec![b' '; MAX_XML_LEN + 1];
        let err = parse(&big).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }
}

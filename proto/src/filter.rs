//! containerd's filter grammar (`pkg/filters`).
//!
//! ```text
//! filters  := filter*                         (the repeated request field: OR)
//! filter   := selector ( "," selector )*      (AND)
//! selector := fieldpath [ op value ]          (no op: the field is present)
//! fieldpath:= field ( "." field )*
//! field    := quoted | [A-Za-z0-9_-]+
//! op       := "==" | "!=" | "~="              (~= is a regular expression match)
//! value    := quoted | [^,]+                  (bare values are trimmed)
//! quoted   := '"' ( [^"\\] | '\' escape )* '"'  |  '/' regex '/'
//! ```
//!
//! Example: `labels."containerd.io/gc.root"==x,kind==committed`.
//! The object being filtered answers field lookups through [`Adaptor`].

use regex::Regex;

/// Longest filter string accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 16 * 1024;
/// Most filters accepted in one request.
pub const MAX_FILTERS: usize = 256;
/// Compiled size limit of a `~=` regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Resolves field paths of an object for [`Filter::matches`].
pub trait Adaptor {
    /// The value at `path` (e.g. `["labels", "a.b"]`), or `None` when absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// Why a filter string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Syntax error at a byte position.
    #[error("filter {filter:?}: {reason} at position {pos}")]
    Syntax {
        /// The offending filter (truncated).
        filter: String,
        /// What was expected.
        reason: &'static str,
        /// Byte offset into the filter.
        pos: usize,
    },
    /// The regular expression of a `~=` selector does not compile.
    #[error("filter {filter:?}: invalid regular expression")]
    Regex {
        /// The offending filter (truncated).
        filter: String,
    },
    /// The filter or the list of filters is too large.
    #[error("filter exceeds {limit} {what}")]
    TooLarge {
        /// What the limit counts.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, a: &dyn Adaptor) -> bool {
        let value = a.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.as_deref() == Some(v.as_str()),
            // As containerd: an absent field compares as the empty string.
            Op::NotEqual(v) => value.as_deref().unwrap_or("") != v,
            Op::Matches(re) => value.is_some_and(|s| re.is_match(&s)),
        }
    }
}

/// A parsed list of filters: OR over filters, AND over the selectors of each.
/// An empty list matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// A filter that matches everything.
    pub fn always() -> Self {
        Filter::default()
    }

    /// Parses the repeated `filters` field of a request.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Self, FilterError> {
        if filters.len() > MAX_FILTERS {
            return Err(FilterError::TooLarge {
                what: "filters",
                limit: MAX_FILTERS,
            });
        }
        let mut any = Vec::with_capacity(filters.len());
        for f in filters {
            let sels = parse_one(f.as_ref())?;
            if sels.is_empty() {
                // An empty filter matches everything, so the whole OR does.
                return Ok(Filter::always());
            }
            any.push(sels);
        }
        Ok(Filter { any })
    }

    /// Parses a single filter string.
    pub fn parse(filter: &str) -> Result<Self, FilterError> {
        Filter::parse_all(&[filter])
    }

    /// Whether the object behind `a` matches.
    pub fn matches(&self, a: &dyn Adaptor) -> bool {
        self.any.is_empty() || self.any.iter().any(|all| all.iter().all(|s| s.matches(a)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(128).collect()
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &'static str) -> FilterError {
        FilterError::Syntax {
            filter: truncate(self.src),
            reason,
            pos: self.pos,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.src[self.pos..].starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// A quoted string starting at the current `"` or `/`.
    fn quoted(&mut self) -> Result<String, FilterError> {
        let quote = self.peek().ok_or_else(|| self.err("expected quote"))?;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self
                .peek()
                .ok_or_else(|| self.err("unterminated quoted string"))?;
            self.pos += c.len_utf8();
            if c == quote {
                return Ok(out);
            }
            if c == '\\' {
                let e = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
                self.pos += e.len_utf8();
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' | '"' | '/' => out.push(e),
                    // Inside /regex/ keep other escapes for the regex engine.
                    _ if quote == '/' => {
                        out.push('\\');
                        out.push(e);
                    }
                    _ => return Err(self.err("unknown escape")),
                }
            } else {
                out.push(c);
            }
        }
    }

    fn field(&mut self) -> Result<String, FilterError> {
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let start = self.pos;
        while let Some(c) = self.peek() {
            if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                break;
            }
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expected field"));
        }
        Ok(self.src[start..self.pos].to_owned())
    }

    fn value(&mut self, allow_regex_quote: bool) -> Result<String, FilterError> {
        self.skip_ws();
        match self.peek() {
            Some('"') => self.quoted(),
            Some('/') if allow_regex_quote => self.quoted(),
            _ => {
                let start = self.pos;
                while let Some(c) = self.peek() {
                    if c == ',' {
                        break;
                    }
                    self.pos += c.len_utf8();
                }
                let v = self.src[start..self.pos].trim();
                if v.is_empty() {
                    return Err(self.err("expected value"));
                }
                Ok(v.to_owned())
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        self.skip_ws();
        let mut path = vec![self.field()?];
        while self.eat(".") {
            path.push(self.field()?);
        }
        self.skip_ws();
        let op = if self.eat("==") {
            Op::Equal(self.value(false)?)
        } else if self.eat("!=") {
            Op::NotEqual(self.value(false)?)
        } else if self.eat("~=") {
            let pattern = self.value(true)?;
            let re = regex::RegexBuilder::new(&pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|_| FilterError::Regex {
                    filter: truncate(self.src),
                })?;
            Op::Matches(re)
        } else {
            Op::Present
        };
        self.skip_ws();
        Ok(Selector { path, op })
    }
}

fn parse_one(src: &str) -> Result<Vec<Selector>, FilterError> {
    if src.len() > MAX_FILTER_LEN {
        return Err(FilterError::TooLarge {
            what: "bytes",
            limit: MAX_FILTER_LEN,
        });
    }
    if src.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut p = Parser { src, pos: 0 };
    let mut sels = vec![p.selector()?];
    loop {
        if p.pos == src.len() {
            return Ok(sels);
        }
        if !p.eat(",") {
            return Err(p.err("expected ',' or end of filter"));
        }
        sels.push(p.selector()?);
    }
}

/// Resolves `labels.<key>` against a label map; a key may itself contain dots
/// (`labels.a.b` is the label `a.b`), as in containerd's adaptors.
pub fn label_field<'a, I>(path: &[String], labels: I) -> Option<String>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    if path.len() < 2 || path[0] != "labels" {
        return None;
    }
    let key = path[1..].join(".");
    labels
        .into_iter()
        .find(|(k, _)| **k == key)
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Obj {
        name: &'static str,
        parent: &'static str,
        labels: HashMap<String, String>,
    }

    impl Adaptor for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            match path.first().map(String::as_str) {
                Some("name") if path.len() == 1 => Some(self.name.to_owned()),
                Some("parent") if path.len() == 1 => Some(self.parent.to_owned()),
                Some("labels") => label_field(path, &self.labels),
                _ => None,
            }
        }
    }

    fn obj(name: &'static str, parent: &'static str, labels: &[(&str, &str)]) -> Obj {
        Obj {
            name,
            parent,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn m(filters: &[&str], o: &Obj) -> bool {
        Filter::parse_all(filters).unwrap().matches(o)
    }

    #[test]
    fn operators() {
        let a = obj("a", "p", &[("containerd.io/gc.root", "x"), ("l", "2")]);
        assert!(m(&[], &a));
        assert!(m(&[""], &a));
        assert!(m(&["name==a"], &a));
        assert!(!m(&["name==b"], &a));
        assert!(m(&["name!=b"], &a));
        assert!(m(&[r#"labels."containerd.io/gc.root"==x"#], &a));
        // `/` is not a field character: such keys must be quoted, as in containerd.
        assert!(Filter::parse("labels.containerd.io/gc.root").is_err());
        assert!(m(&["labels.l"], &a));
        assert!(!m(&["labels.missing"], &a));
        assert!(m(&["labels.l==2"], &a));
        assert!(m(&["labels.missing!=2"], &a));
        assert!(m(&[r#"parent!="""#], &a));
        assert!(!m(&[r#"parent=="""#], &a));
        assert!(m(&["name~=^a$"], &a));
        assert!(m(&["name~=/^[a-c]$/"], &a));
        assert!(!m(&["labels.missing~=.*"], &a));
    }

    #[test]
    fn and_or() {
        let a = obj("a", "", &[("l", "1")]);
        assert!(m(&["name==a,labels.l==1"], &a));
        assert!(!m(&["name==a,labels.l==2"], &a));
        assert!(m(&["name==zz", "name==a"], &a));
        assert!(!m(&["name==zz", "labels.l==2"], &a));
        assert!(m(&[" name == a , labels.l "], &a));
        assert!(m(&[r#"parent=="""#], &a));
    }

    #[test]
    fn dotted_label_keys() {
        let a = obj("a", "", &[("a.b.c", "v")]);
        assert!(m(&["labels.a.b.c==v"], &a));
        assert!(m(&[r#"labels."a.b.c"==v"#], &a));
    }

    #[test]
    fn malformed_filters_are_errors() {
        for bad in [
            "==a",
            "name==",
            "name=a",
            "name==a,",
            ",name==a",
            "labels.\"unterminated",
            "name~=(",
            "name~=/unterminated",
            "na me==a",
            "labels.==x",
            "name==\"bad\\q\"",
            "\u{0}",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?} should not parse");
        }
        let huge = "a".repeat(MAX_FILTER_LEN + 1);
        assert!(matches!(
            Filter::parse(&huge),
            Err(FilterError::TooLarge { .. })
        ));
        let many: Vec<&str> = vec!["name==a"; MAX_FILTERS + 1];
        assert!(Filter::parse_all(&many).is_err());
        let big_regex = format!("name~={}", "(a{100}){100}".repeat(10));
        assert!(Filter::parse(&big_regex).is_err());
    }
}

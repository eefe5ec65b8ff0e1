//! What of a URL may appear in a message or a log line.
//!
//! Context messages never contain credentials, tokens or URL query strings (blob
//! redirects carry signed queries); [`redact_url`] is the one way URLs enter messages.

/// `scheme://authority/path` of `uri`, without userinfo, query or fragment: what may
/// appear in a message or a log line.
pub fn redact_url(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("?");
    let host = uri.host().unwrap_or("?");
    let port = uri
        .port()
        .map(|p| format!(":{}", p.as_str()))
        .unwrap_or_default();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("{scheme}://{host}{port}{}", uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_drops_userinfo_and_query() {
        let u: http::Uri =
            "https://user:pw@storage.example:8443/blob/x?X-Amz-Signature=s3cr3t#frag"
                .parse()
                .unwrap();
        let r = redact_url(&u);
        assert_eq!(r, "https://storage.example:8443/blob/x");
    }
}

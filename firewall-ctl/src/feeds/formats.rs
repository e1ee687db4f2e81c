//! Reading each vendor's format: from a response body to the entries it
//! lists (as written), selected by the feed's filter. Tolerant of what real
//! feeds do (unknown keys, CRLF, comments, mixed families, non-IP keys);
//! strict about what makes a body something else (an HTML page, a rate
//! limit message, a cut-off download, a missing required key).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::FeedFormat;

/// Why a body is not a list of the expected format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the body is empty")]
    Empty,
    #[error("the body is not UTF-8 text")]
    NotText,
    #[error(
        "the body is an HTML page, not a {0} list (a captive portal, a challenge or an error page?)"
    )]
    Html(FeedFormat),
    #[error("the body is not valid JSON ({0}); a download cut short?")]
    NotJson(String),
    #[error("`{key}` is missing; the {format} format has it")]
    MissingKey { format: FeedFormat, key: String },
    #[error("`{key}` is not {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("the response says it failed (`success` is false)")]
    Unsuccessful,
}

/// The filter of a feed: key -> accepted values (case-insensitive).
pub type Filter = BTreeMap<String, Vec<String>>;

/// The entries `body` lists for a feed of `format` with `filter`, as
/// written (prefixes or addresses, not yet validated). A `dns` feed's body
/// is its resolved addresses, one per line.
pub fn entries(
    format: FeedFormat,
    filter: &Filter,
    body: &[u8],
) -> Result<Vec<String>, FormatError> {
    let text = std::str::from_utf8(body).map_err(|_| FormatError::NotText)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(FormatError::Empty);
    }
    if trimmed.starts_with('<') {
        return Err(FormatError::Html(format));
    }
    let json = Json { format, filter };
    let root = || -> Result<Value, FormatError> {
        serde_json::from_str(text).map_err(|err| FormatError::NotJson(err.to_string()))
    };
    match format {
        FeedFormat::Plain | FeedFormat::Dns => Ok(plain(text)),
        FeedFormat::Atlassian => json.atlassian(&root()?),
        FeedFormat::Aws => json.aws(&root()?),
        FeedFormat::Github => json.github(&root()?),
        FeedFormat::Gcp => json.gcp(&root()?),
        FeedFormat::Azure => json.azure(&root()?),
        FeedFormat::Cloudflare => json.cloudflare(&root()?),
        FeedFormat::Fastly => json.fastly(&root()?),
    }
}

/// One entry per line; `#` or `;` starts a comment, also after an entry;
/// CRLF and a missing last newline are fine.
fn plain(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split(['#', ';']).next().unwrap_or("").trim())
        .filter(|entry| !entry.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads one JSON format.
struct Json<'a> {
    format: FeedFormat,
    filter: &'a Filter,
}

impl Json<'_> {
    fn missing(&self, key: &str) -> FormatError {
        FormatError::MissingKey {
            format: self.format,
            key: key.to_string(),
        }
    }

    /// `object[key]`, which the format requires.
    fn required<'v>(&self, object: &'v Value, key: &str) -> Result<&'v Value, FormatError> {
        object.get(key).ok_or_else(|| self.missing(key))
    }

    /// `object[key]` as an array, required.
    fn array<'v>(&self, object: &'v Value, key: &str) -> Result<&'v [Value], FormatError> {
        self.required(object, key)?
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| FormatError::WrongType {
                key: key.to_string(),
                expected: "an array",
            })
    }

    /// The strings of the array `object[key]`, required.
    fn strings(&self, object: &Value, key: &str) -> Result<Vec<String>, FormatError> {
        self.array(object, key)?
            .iter()
            .map(|value| {
                value
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| FormatError::WrongType {
                        key: key.to_string(),
                        expected: "an array of strings",
                    })
            })
            .collect()
    }

    /// Whether an item passes the filter: for each filter key, the item's
    /// field for it (`field(key)`: a string or an array of strings) holds
    /// one of the accepted values.
    fn selects<'v>(&self, field: impl Fn(&str) -> Option<&'v Value>) -> bool {
        self.filter.iter().all(|(key, accepted)| {
            let matches = |value: &Value| {
                value.as_str().is_some_and(|value| {
                    accepted
                        .iter()
                        .any(|wanted| wanted.eq_ignore_ascii_case(value))
                })
            };
            match field(key) {
                Some(Value::Array(values)) => values.iter().any(matches),
                Some(value) => matches(value),
                None => false,
            }
        })
    }

    /// The string `key` of each of `items` the filter selects, the filter's
    /// keys being the items' field names.
    fn selected(&self, items: &[Value], key: &str) -> Result<Vec<String>, FormatError> {
        let mut entries = Vec::new();
        for item in items
            .iter()
            .filter(|item| self.selects(|field| item.get(field)))
        {
            match item.get(key).and_then(Value::as_str) {
                Some(entry) => entries.push(entry.to_string()),
                None => return Err(self.missing(key)),
            }
        }
        Ok(entries)
    }

    fn atlassian(&self, root: &Value) -> Result<Vec<String>, FormatError> {
        self.selected(self.array(root, "items")?, "cidr")
    }

    fn aws(&self, root: &Value) -> Result<Vec<String>, FormatError> {
        let mut entries = self.selected(self.array(root, "prefixes")?, "ip_prefix")?;
        entries.extend(self.selected(self.array(root, "ipv6_prefixes")?, "ipv6_prefix")?);
        Ok(entries)
    }

    fn github(&self, root: &Value) -> Result<Vec<String>, FormatError> {
        let mut entries = Vec::new();
        for key in self.filter.get("keys").into_iter().flatten() {
            entries.extend(self.strings(root, key)?);
        }
        Ok(entries)
    }

    fn gcp(&self, root: &Value) -> Result<Vec<String>, FormatError> {
        let mut entries = Vec::new();
        for item in self.array(root, "prefixes")? {
            if !self.selects(|field| item.get(field)) {
                continue;
            }
            let prefix = ["ipv4Prefix", "ipv6Prefix"]
                .iter()
                .find_map(|key| item.get(key).and_then(Value::as_str))
                .ok_or_else(|| self.missing("ipv4Prefix` or `ipv6Prefix"))?;
            entries.push(prefix.to_string());
        }
        Ok(entries)
    }

    fn azure(&self, root: &Value) -> Result<Vec<String>, FormatError> {
        let mut entries = Vec::new();
        for tag in self.array(root, "values")? {
            let properties = self.required(tag, "properties")?;
            // `name` is the tag's; `region` and `systemService` its properties'.
            let field = |key: &str| match key {
                "name" => tag.get("name"),
                "region" => properties.get("region"),
                _ => properties.get("systemService"),
            };
            if self.selects(field) {
                entries.extend(self.strings(properties, "addressPrefixes")?);
            }
        }
        Ok(entries)
    }

    fn cloudflare(&self, root: &Value) -> Result<Vec<String>, FormatError> {
        if root.get("success").and_then(Value::as_bool) == Some(false) {
            return Err(FormatError::Unsuccessful);
        }
        let result = self.required(root, "result")?;
        let mut entries = self.strings(result, "ipv4_cidrs")?;
        entries.extend(self.strings(result, "ipv6_cidrs")?);
        Ok(entries)
    }

    fn fastly(&self, root: &Value) -> Result<Vec<String>, FormatError> {
        let mut entries = self.strings(root, "addresses")?;
        entries.extend(self.strings(root, "ipv6_addresses")?);
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture that follows a vendor's real format (see
    /// `../shared/reference/feeds.md`), shared with the end-to-end tests.
    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/feeds")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    fn filter(pairs: &[(&str, &[&str])]) -> Filter {
        pairs
            .iter()
            .map(|(key, values)| {
                (
                    key.to_string(),
                    values.iter().map(|value| value.to_string()).collect(),
                )
            })
            .collect()
    }

    fn read(format: FeedFormat, file: &str, pairs: &[(&str, &[&str])]) -> Vec<String> {
        entries(format, &filter(pairs), &fixture(file)).unwrap()
    }

    #[test]
    fn plain_lists_take_comments_crlf_tabs_and_a_missing_last_newline() {
        assert_eq!(
            read(FeedFormat::Plain, "plain.netset", &[]),
            [
                "203.0.113.10",
                "203.0.113.0/28",
                "198.51.100.5/24",
                "2001:db8:10::/48",
                "203.0.113.10",
                "192.0.2.0/25",
                "192.0.2.128/25",
            ]
        );
    }

    #[test]
    fn atlassian_filters_by_product_direction_and_perimeter() {
        let all = read(FeedFormat::Atlassian, "atlassian.json", &[]);
        assert_eq!(all.len(), 7);
        assert_eq!(
            read(
                FeedFormat::Atlassian,
                "atlassian.json",
                &[("product", &["jira"]), ("direction", &["egress"])]
            ),
            [
                "203.0.113.0/25",
                "203.0.113.16/28",
                "192.0.2.128/25",
                "2001:db8:a7::/48"
            ]
        );
        assert_eq!(
            read(
                FeedFormat::Atlassian,
                "atlassian.json",
                &[
                    ("product", &["JIRA"]),
                    ("direction", &["egress"]),
                    ("perimeter", &["commercial"])
                ]
            ),
            ["203.0.113.0/25", "203.0.113.16/28", "2001:db8:a7::/48"],
            "filter values match case-insensitively"
        );
    }

    #[test]
    fn aws_takes_both_families_and_filters_by_service_and_region() {
        assert_eq!(read(FeedFormat::Aws, "aws.json", &[]).len(), 10);
        assert_eq!(
            read(FeedFormat::Aws, "aws.json", &[("service", &["CLOUDFRONT"])]),
            ["198.51.100.0/24", "2001:db8:ab::/48"]
        );
        assert_eq!(
            read(
                FeedFormat::Aws,
                "aws.json",
                &[("service", &["ec2"]), ("region", &["us-east-1"])]
            ),
            ["203.0.113.0/26", "2001:db8:aa::/48"]
        );
    }

    #[test]
    fn github_takes_the_named_keys_and_ignores_the_others() {
        assert_eq!(
            read(FeedFormat::Github, "github.json", &[("keys", &["hooks"])]),
            [
                "192.0.2.16/28",
                "203.0.113.32/27",
                "2001:db8:48::/48",
                "192.0.2.16/28"
            ]
        );
        let err = entries(
            FeedFormat::Github,
            &filter(&[("keys", &["domains"])]),
            &fixture("github.json"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`domains` is not an array",
            "a non-IP key cannot be taken"
        );
        let err = entries(
            FeedFormat::Github,
            &filter(&[("keys", &["hookz"])]),
            &fixture("github.json"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`hookz` is missing; the github format has it"
        );
    }

    #[test]
    fn gcp_azure_cloudflare_and_fastly() {
        assert_eq!(
            read(FeedFormat::Gcp, "gcp.json", &[("scope", &["us-central1"])]),
            ["203.0.113.128/25", "2001:db8:6c::/48"]
        );
        assert_eq!(read(FeedFormat::Gcp, "gcp.json", &[]).len(), 4);
        assert_eq!(
            read(
                FeedFormat::Azure,
                "azure.json",
                &[("name", &["AzureDevOps"])]
            ),
            ["203.0.113.0/26", "203.0.113.64/26", "2001:db8:de::/48"]
        );
        assert_eq!(
            read(
                FeedFormat::Azure,
                "azure.json",
                &[
                    ("system_service", &["AzureDevOps"]),
                    ("region", &["westus2"])
                ]
            ),
            ["203.0.113.64/26"]
        );
        assert_eq!(read(FeedFormat::Azure, "azure.json", &[]).len(), 6);
        assert_eq!(
            read(FeedFormat::Cloudflare, "cloudflare.json", &[]),
            ["203.0.113.0/26", "198.51.100.0/25", "2001:db8:cf::/48"]
        );
        assert_eq!(
            read(FeedFormat::Fastly, "fastly.json", &[]),
            ["203.0.113.0/27", "198.51.100.128/25", "2001:db8:fa::/48"]
        );
    }

    #[test]
    fn bodies_that_are_not_lists_are_refused() {
        let none = Filter::new();
        let refused = |format, body: &str| entries(format, &none, body.as_bytes()).unwrap_err();
        assert_eq!(refused(FeedFormat::Plain, ""), FormatError::Empty);
        assert_eq!(refused(FeedFormat::Aws, " \r\n"), FormatError::Empty);
        assert_eq!(
            refused(
                FeedFormat::Plain,
                "<!DOCTYPE html><html><body>Just a moment...</body></html>"
            ),
            FormatError::Html(FeedFormat::Plain)
        );
        assert_eq!(
            refused(FeedFormat::Fastly, "\n  <html>rate limited</html>"),
            FormatError::Html(FeedFormat::Fastly)
        );
        assert!(matches!(
            refused(
                FeedFormat::Aws,
                r#"{"syncToken": "1", "prefixes": [{"ip_prefix": "203.0"#
            ),
            FormatError::NotJson(_)
        ));
        assert!(matches!(
            refused(FeedFormat::Cloudflare, "API rate limit exceeded"),
            FormatError::NotJson(_)
        ));
        assert_eq!(
            refused(FeedFormat::Aws, r#"{"syncToken": "1", "prefixes": []}"#).to_string(),
            "`ipv6_prefixes` is missing; the aws format has it"
        );
        assert_eq!(
            refused(
                FeedFormat::Cloudflare,
                r#"{"result": null, "success": false, "errors": [{"code": 10000}]}"#
            ),
            FormatError::Unsuccessful
        );
        assert_eq!(
            refused(
                FeedFormat::Fastly,
                r#"{"addresses": "203.0.113.0/27", "ipv6_addresses": []}"#
            )
            .to_string(),
            "`addresses` is not an array"
        );
        assert_eq!(
            entries(FeedFormat::Plain, &none, &[0xff, 0xfe, 0x00]).unwrap_err(),
            FormatError::NotText
        );
    }
}

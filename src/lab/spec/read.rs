//! Reading a lab file: the TOML into its raw sections (with spans, for file:line errors) and
//! the `[lab]` section's own keys.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{valid_name, Backend, SpecError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) lab: RawLab,
    #[serde(default)]
    pub(super) network: Vec<RawNetwork>,
    #[serde(default)]
    pub(super) container: Vec<RawContainer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLab {
    pub(super) name: Option<Spanned<String>>,
    pub(super) description: Option<String>,
    pub(super) userland_proxy: Option<bool>,
    pub(super) transparent_proxy: Option<bool>,
    pub(super) backend: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) name: Spanned<String>,
    pub(super) bridge: Option<Spanned<String>>,
    pub(super) subnet: Spanned<String>,
    pub(super) gateway: Option<Spanned<String>>,
    pub(super) ipv6: Option<Spanned<String>>,
    pub(super) dns: Option<bool>,
    pub(super) internal: Option<bool>,
    pub(super) upstream: Option<Spanned<String>>,
    pub(super) mtu: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainer {
    pub(super) name: Spanned<String>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) network: Option<Spanned<String>>,
    pub(super) networks: Option<Vec<Spanned<String>>>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) address6: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) addresses: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) aliases: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) ports: Vec<Spanned<String>>,
    pub(super) run: Option<Spanned<String>>,
}

/// The text being parsed and its name: turns a span into a file:line error.
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
}

impl Ctx<'_> {
    /// The 1-based line holding byte `offset`.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    /// A mistake at `span`.
    pub(super) fn err(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> SpecError {
        SpecError {
            file: self.file.to_string(),
            line: self.line_of(span.start),
            message: message.into(),
        }
    }
}

/// The TOML read into raw sections; TOML's own mistakes (syntax, unknown keys, types) keep
/// TOML's message with our file:line.
pub(super) fn toml(cx: &Ctx<'_>) -> Result<RawFile, SpecError> {
    toml::from_str(cx.text).map_err(|e| SpecError {
        file: cx.file.into(),
        line: e.span().map(|s| cx.line_of(s.start)).unwrap_or(0),
        message: e.message().trim().to_string(),
    })
}

/// The `[lab]` section's name (default `nettool`) and backend preference.
pub(super) fn lab_section(
    cx: &Ctx<'_>,
    lab: &RawLab,
) -> Result<(String, Option<Backend>), SpecError> {
    let name = match &lab.name {
        Some(n) => {
            if !valid_name(n.get_ref()) {
                return Err(cx.err(n.span(), format!("lab name '{}' must be 1-48 characters of letters, digits, '-', '_', '.', starting with a letter or digit", n.get_ref())));
            }
            n.get_ref().clone()
        }
        None => "nettool".into(),
    };
    let backend = match &lab.backend {
        None => None,
        Some(b) => Some(match b.get_ref().as_str() {
            "iptables" => Backend::Iptables,
            "nftables" => Backend::Nftables,
            other => {
                return Err(cx.err(
                    b.span(),
                    format!("unknown backend '{other}' (iptables or nftables)"),
                ))
            }
        }),
    };
    Ok((name, backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(text: &str) -> Ctx<'_> {
        Ctx {
            text,
            file: "lab.toml",
        }
    }

    #[test]
    fn mistakes_in_the_toml_and_the_lab_section_keep_their_text() {
        super::super::cases::check_mistakes("toml_");
        super::super::cases::check_mistakes("lab_");
    }

    #[test]
    fn lines_count_from_one_and_clamp_past_the_end() {
        let c = cx("a\nb\nc");
        assert_eq!(c.line_of(0), 1);
        assert_eq!(c.line_of(2), 2);
        assert_eq!(c.line_of(999), 3);
        assert_eq!(c.err(4..5, "x").to_string(), "lab.toml:3: x");
    }

    #[test]
    fn an_empty_file_is_an_empty_lab_named_nettool() {
        let c = cx("");
        let raw = toml(&c).unwrap();
        assert!(raw.network.is_empty() && raw.container.is_empty());
        assert_eq!(lab_section(&c, &raw.lab).unwrap(), ("nettool".into(), None));
    }

    #[test]
    fn the_lab_section_gives_name_and_backend() {
        let c = cx("[lab]\nname = \"x.1\"\nbackend = \"nftables\"\n");
        let raw = toml(&c).unwrap();
        assert_eq!(
            lab_section(&c, &raw.lab).unwrap(),
            ("x.1".into(), Some(Backend::Nftables))
        );
    }
}

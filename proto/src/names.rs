//! Title and rendition names: one rule, checked once, for every component.
//!
//! Names travel in tokens, manifests, tracker announces, peer requests and
//! URLs, and become path components on the origin, the seed's disk cache
//! and the player endpoint. So every component must accept exactly the same
//! names: a name one of them served and another silently dropped was a
//! rendition some viewers could not play. The rule is the narrowest that
//! every use needs: a single, safe path component.
//!
//! Parse, don't validate: [`Title`] and [`RenditionName`] can only hold a
//! valid name, so code that takes one never checks again.

use std::fmt;

/// Longest title or rendition name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Whether `name` is a valid title or rendition name: 1 to
/// [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `-`, `_` and `.`, not
/// starting with a dot (so never `.`, `..` or a hidden file).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A name that is not valid (see [`is_valid_name`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} name {shown:?}: use 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' and '.', not starting with '.'"
)]
pub struct NameError {
    kind: &'static str,
    /// The refused name, cut to a printable length.
    shown: String,
}

impl NameError {
    fn new(kind: &'static str, name: &str) -> Self {
        let shown = name.chars().take(MAX_NAME_LEN + 8).collect();
        Self { kind, shown }
    }

    /// What was being named: "title" or "rendition".
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses `name`, refusing anything [`is_valid_name`] refuses.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                if is_valid_name(&name) {
                    Ok(Self(name))
                } else {
                    Err(NameError::new($kind, &name))
                }
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(name: &str) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(name: String) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(name: &str) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

name_type!(
    /// A title id (`sample`, `final-2026`): the key of a presentation on the
    /// origin, in the license server's catalogue and in the tracker.
    Title,
    "title"
);

name_type!(
    /// A rendition's name (`video_720p`): a directory of the packaged title
    /// and a swarm of the tracker.
    RenditionName,
    "rendition"
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_rule() {
        for good in ["sample", "video_720p", "a", "A-b.c_9", &"x".repeat(128)] {
            assert!(is_valid_name(good), "{good}");
            assert_eq!(Title::new(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a:b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
            let error = RenditionName::new(bad).unwrap_err();
            assert_eq!(error.kind(), "rendition");
        }
    }

    #[test]
    fn a_refused_name_is_shown_cut_short() {
        let long = "y".repeat(10_000);
        let message = Title::new(long).unwrap_err().to_string();
        assert!(message.len() < 400, "{message}");
        assert!(message.starts_with("invalid title name"));
    }
}

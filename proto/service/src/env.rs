//! A serde deserializer for one environment variable, placed at its
//! setting's path, so that a configuration layer can be deserialized from
//! it: the setting's own type says how the text is read (numbers, booleans,
//! comma-separated lists), instead of guessing from the text.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, IntoDeserializer, Visitor};

/// Why a variable's text does not fit its setting's type.
#[derive(Debug)]
pub(crate) struct Error(pub(crate) String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// The text of one variable, seen from `path` (the keys still to descend:
/// empty once at the setting itself).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Value<'a> {
    pub(crate) path: &'a [&'a str],
    pub(crate) raw: &'a str,
}

impl<'a> Value<'a> {
    /// The layer of a section: a map with the one key that leads on.
    fn nested<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (key, rest) = self
            .path
            .split_first()
            .ok_or_else(|| Error("empty setting path".to_owned()))?;
        let value = Value {
            path: rest,
            raw: self.raw,
        };
        visitor.visit_map(MapDeserializer::new(std::iter::once((*key, value))))
    }

    /// `raw` read as a TOML value (an array or inline table written out).
    fn toml(self) -> Result<toml::Value, Error> {
        let mut table: toml::Table = toml::from_str(&format!("v = {}", self.raw))
            .map_err(|e| Error(format!("not a TOML value: {}", e.message())))?;
        table
            .remove("v")
            .ok_or_else(|| Error("not a TOML value".to_owned()))
    }
}

impl<'de> IntoDeserializer<'de, Error> for Value<'_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parsed {
    ($($method:ident => $visit:ident as $ty:ty, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let text = self.raw.trim();
            let value: $ty = text
                .parse()
                .map_err(|e| Error(format!("{text:?} is not {}: {e}", $what)))?;
            visitor.$visit(value)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Value<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.path.is_empty() {
            visitor.visit_str(self.raw)
        } else {
            self.nested(visitor)
        }
    }

    parsed! {
        deserialize_i8 => visit_i8 as i8, "an integer";
        deserialize_i16 => visit_i16 as i16, "an integer";
        deserialize_i32 => visit_i32 as i32, "an integer";
        deserialize_i64 => visit_i64 as i64, "an integer";
        deserialize_u8 => visit_u8 as u8, "a non-negative integer";
        deserialize_u16 => visit_u16 as u16, "a non-negative integer";
        deserialize_u32 => visit_u32 as u32, "a non-negative integer";
        deserialize_u64 => visit_u64 as u64, "a non-negative integer";
        deserialize_f32 => visit_f32 as f32, "a number";
        deserialize_f64 => visit_f64 as f64, "a number";
        deserialize_char => visit_char as char, "one character";
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.raw.trim().to_ascii_lowercase().as_str() {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            other => Err(Error(format!("{other:?} is not true or false"))),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.raw)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.raw)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(self.raw.as_bytes())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(self.raw.as_bytes())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // An empty variable never gets here: the loader treats it as unset.
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    /// A list: a TOML array (`["a", "b"]`), or comma-separated items
    /// (`a, b`), each read as the item type asks.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.raw.trim_start().starts_with('[') {
            return de::Deserializer::deserialize_seq(self.toml()?, visitor)
                .map_err(|e| Error(e.message().to_owned()));
        }
        let items = self
            .raw
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|raw| Value { path: &[], raw });
        visitor.visit_seq(SeqDeserializer::new(items))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if !self.path.is_empty() {
            return self.nested(visitor);
        }
        if self.raw.trim_start().starts_with('{') {
            return de::Deserializer::deserialize_map(self.toml()?, visitor)
                .map_err(|e| Error(e.message().to_owned()));
        }
        Err(Error(
            "expected a TOML inline table ({ key = value, ... })".to_owned(),
        ))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self.raw.trim().into_deserializer())
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.raw)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

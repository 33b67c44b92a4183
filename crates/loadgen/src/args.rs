//! `--flag value` pairs, parsed by hand to keep the crate's dependencies to tokio and our own.

use std::collections::BTreeMap;
use std::str::FromStr;

/// Flags given on the command line, consumed by the `get`/`opt` calls; [`Flags::finish`]
/// refuses any left over, so a typo is an error, not a silently ignored option.
#[derive(Debug, Default)]
pub struct Flags {
    values: BTreeMap<String, String>,
}

impl Flags {
    /// Parses `--name value` pairs.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut values = BTreeMap::new();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    (name.to_string(), v)
                }
            };
            if values.insert(name.clone(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Self { values })
    }

    /// The value of `--name`, or `default`.
    pub fn get<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, String> {
        Ok(self.opt(name)?.unwrap_or(default))
    }

    /// The value of `--name`, if given.
    pub fn opt<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, String> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("--{name}: cannot parse {v:?}")),
        }
    }

    /// Fails if a flag was given that nothing asked for.
    pub fn finish(self) -> Result<(), String> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!("unknown flag --{k}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(s: &str) -> Result<Flags, String> {
        Flags::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn values_defaults_and_leftovers() {
        let mut f = flags("--size 100 --acks=-1 --topic t").unwrap();
        assert_eq!(f.get("size", 0usize).unwrap(), 100);
        assert_eq!(f.get("acks", 1i16).unwrap(), -1);
        assert_eq!(f.get("records", 7usize).unwrap(), 7);
        assert_eq!(f.finish().unwrap_err(), "unknown flag --topic");
    }

    #[test]
    fn malformed_input_is_refused() {
        assert!(flags("size 100").is_err());
        assert!(flags("--size").is_err());
        assert!(flags("--a 1 --a 2").is_err());
        assert!(flags("--size x").unwrap().get("size", 0u32).is_err());
    }
}

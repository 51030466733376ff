//! Command-line flags as pflag (etcdctl's parser) reads them: `--name value`, `--name=value`,
//! `-w value`, boolean flags with an optional `=true|false`, flags anywhere among the
//! positional arguments, and `--` ending the flags.

use std::collections::HashMap;

use super::{fail, Failure, EXIT_ERROR};

pub struct Flags {
    values: HashMap<String, String>,
    bools: HashMap<String, bool>,
    pub positional: Vec<String>,
}

impl Flags {
    pub fn parse(
        args: &[String],
        value_flags: &[&str],
        bool_flags: &[&str],
    ) -> Result<Flags, Failure> {
        let mut f = Flags {
            values: HashMap::new(),
            bools: HashMap::new(),
            positional: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--" {
                f.positional.extend(it.by_ref().cloned());
                break;
            }
            let name = match arg.strip_prefix("--") {
                Some(n) => n,
                None => match arg.strip_prefix('-') {
                    Some(n) if !n.is_empty() => n,
                    _ => {
                        f.positional.push(arg.clone());
                        continue;
                    }
                },
            };
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            if value_flags.contains(&name) {
                let v = match inline {
                    Some(v) => v,
                    None => match it.next() {
                        Some(v) => v.clone(),
                        None => {
                            return fail(EXIT_ERROR, format!("flag needs an argument: --{name}"))
                        }
                    },
                };
                f.values.insert(name.to_string(), v);
            } else if bool_flags.contains(&name) {
                let v = match inline.as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(other) => {
                        return fail(
                            EXIT_ERROR,
                            format!("invalid argument {other:?} for \"--{name}\" flag: strconv.ParseBool: parsing {other:?}: invalid syntax"),
                        )
                    }
                };
                f.bools.insert(name.to_string(), v);
            } else if arg.starts_with("--") {
                return fail(EXIT_ERROR, format!("unknown flag: --{name}"));
            } else {
                return fail(
                    EXIT_ERROR,
                    format!("unknown shorthand flag: '{name}' in {arg}"),
                );
            }
        }
        Ok(f)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn bool(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }

    /// A boolean flag whose default is `default` (etcdctl's `--interactive`).
    pub fn bool_or(&self, name: &str, default: bool) -> bool {
        self.bools.get(name).copied().unwrap_or(default)
    }
}

//! An app's variables (`[variables]` in the manifest) and the values a component reads through
//! `wasi:config` (its `variables`, templates over the app's).
//!
//! A variable's value is found when the app starts, each source overriding the one before:
//! its `default`; the environment, `PIER_VARIABLE_<NAME>` (the name in upper case, `-` as
//! `_`); the `--variables-file` (dotenv `NAME=value` lines, or a TOML table of strings when the
//! file ends in `.toml`; names as declared, or in upper case). A required variable with no
//! value stops the start, naming it. A component's variable whose template refers to a
//! variable with no value (neither required nor given) is absent. Values are never logged:
//! [`ConfigValues`] prints names only.

use std::collections::BTreeMap;
use std::path::Path;

use crate::manifest::Variable;

/// The prefix of the environment variables that give variables their values.
pub const ENV_PREFIX: &str = "PIER_VARIABLE_";

/// What a component reads with `wasi:config/store`: name to value. Its `Debug` shows names
/// only, since values may be secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConfigValues(pub BTreeMap<String, String>);

impl std::fmt::Debug for ConfigValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The environment variable that sets `name`: `PIER_VARIABLE_DB_URL` for `db_url`.
pub fn env_name(name: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// Reads a variables file: TOML when its name ends in `.toml`, else dotenv. Errors never quote
/// the file's contents (they may hold secrets).
pub fn load_variables_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let shown = path.display();
    if path.extension().is_some_and(|e| e == "toml") {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read it: {e}"))?;
        let table: BTreeMap<String, toml::Value> = toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(1, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            });
            format!("{shown}:{line}: not a TOML table of strings")
        })?;
        table
            .into_iter()
            .map(|(name, value)| match value {
                toml::Value::String(s) => Ok((name, s)),
                _ => Err(format!("{shown}: {name}: the value must be a string")),
            })
            .collect()
    } else {
        let lines =
            dotenvy::from_path_iter(path).map_err(|e| format!("{shown}: cannot read it: {e}"))?;
        let mut out = BTreeMap::new();
        for (n, line) in lines.enumerate() {
            let (name, value) = line.map_err(|e| match e {
                dotenvy::Error::Io(e) => format!("{shown}: cannot read it: {e}"),
                _ => format!(
                    "{shown}: entry {} is not NAME=VALUE (dotenv; a file ending in .toml is read as TOML)",
                    n + 1
                ),
            })?;
            out.insert(name, value);
        }
        Ok(out)
    }
}

/// The values of the `declared` variables: defaults, then `env` (`PIER_VARIABLE_<NAME>`), then
/// `file`. A name in `file` that is not declared, or a required variable left without a value,
/// is an error naming it.
pub fn resolve(
    declared: &BTreeMap<String, Variable>,
    env: impl Fn(&str) -> Option<String>,
    file: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut from_file = BTreeMap::new();
    for (name, value) in file {
        let lower = name.to_ascii_lowercase();
        let found = declared
            .keys()
            .find(|d| **d == lower || d.replace('-', "_") == lower);
        match found {
            Some(d) => {
                from_file.insert(d.as_str(), value);
            }
            None => {
                return Err(format!(
                    "the variables file sets {name:?}, which the manifest does not declare in [variables]"
                ));
            }
        }
    }
    let mut values = BTreeMap::new();
    for (name, var) in declared {
        let value = from_file
            .get(name.as_str())
            .map(|v| v.to_string())
            .or_else(|| env(&env_name(name)))
            .or_else(|| var.default.clone());
        match value {
            Some(value) => {
                values.insert(name.clone(), value);
            }
            None if var.required => {
                return Err(format!(
                    "variable {name:?} is required and has no value: set {} or give it in --variables-file",
                    env_name(name)
                ));
            }
            None => {}
        }
    }
    Ok(values)
}

/// `template` with each `{{ name }}` replaced by its value; `None` if one has no value.
pub fn expand(template: &str, values: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        out.push_str(values.get(after[..close].trim())?);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> BTreeMap<String, Variable> {
        let mut d = BTreeMap::new();
        d.insert(
            "db_url".to_string(),
            Variable {
                default: Some("sqlite://x".into()),
                ..Variable::default()
            },
        );
        d.insert(
            "api-token".to_string(),
            Variable {
                required: true,
                secret: true,
                ..Variable::default()
            },
        );
        d.insert("optional".to_string(), Variable::default());
        d
    }

    #[test]
    fn each_source_overrides_the_one_before() {
        let env = |name: &str| (name == "PIER_VARIABLE_API_TOKEN").then(|| "from-env".to_string());
        let none = BTreeMap::new();
        let values = resolve(&declared(), env, &none).unwrap();
        assert_eq!(values["db_url"], "sqlite://x");
        assert_eq!(values["api-token"], "from-env");
        assert!(!values.contains_key("optional"));

        let mut file = BTreeMap::new();
        file.insert("API_TOKEN".to_string(), "from-file".to_string());
        file.insert("db_url".to_string(), "pg://y".to_string());
        let values = resolve(&declared(), env, &file).unwrap();
        assert_eq!(values["api-token"], "from-file");
        assert_eq!(values["db_url"], "pg://y");

        let e = resolve(&declared(), |_| None, &none).unwrap_err();
        assert!(
            e.contains("\"api-token\" is required") && e.contains("PIER_VARIABLE_API_TOKEN"),
            "{e}"
        );
        file.insert("nope".to_string(), "1".to_string());
        let e = resolve(&declared(), env, &file).unwrap_err();
        assert!(e.contains("\"nope\""), "{e}");
    }

    #[test]
    fn templates_expand_or_are_absent() {
        let mut values = BTreeMap::new();
        values.insert("host".to_string(), "db".to_string());
        values.insert("port".to_string(), "5432".to_string());
        assert_eq!(
            expand("pg://{{ host }}:{{port}}/app", &values).as_deref(),
            Some("pg://db:5432/app")
        );
        assert_eq!(expand("plain", &values).as_deref(), Some("plain"));
        assert_eq!(expand("{{ missing }}", &values), None);
    }

    #[test]
    fn files_are_dotenv_or_toml_and_errors_quote_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("vars.env");
        std::fs::write(&env, "# comment\nAPI_TOKEN=s3cret\ndb_url=\"pg://x\"\n").unwrap();
        let values = load_variables_file(&env).unwrap();
        assert_eq!(values["API_TOKEN"], "s3cret");
        assert_eq!(values["db_url"], "pg://x");

        let toml = dir.path().join("vars.toml");
        std::fs::write(&toml, "api_token = \"s3cret\"\n").unwrap();
        assert_eq!(load_variables_file(&toml).unwrap()["api_token"], "s3cret");
        std::fs::write(&toml, "api_token = 7\n").unwrap();
        assert!(load_variables_file(&toml).is_err());

        std::fs::write(&env, "API_TOKEN='s3cret\n").unwrap();
        let e = load_variables_file(&env).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        let debug = format!(
            "{:?}",
            ConfigValues(BTreeMap::from([("token".into(), "s3cret".into())]))
        );
        assert_eq!(debug, "{\"token\"}");
    }
}

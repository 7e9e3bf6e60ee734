//! Where a setting's raw value comes from: the environment first, then `config.yml`, as pycti's
//! `get_config_variable` does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ConfigError;
use super::settings::Setting;

/// A raw value and where it was found, so an error can name the place the user must fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    /// The value as text (YAML numbers and booleans are turned into their text form).
    pub value: String,
    /// `OPENCTI_URL` or `opencti.url (config.yml)`.
    pub origin: String,
}

/// Looks settings up in an environment snapshot and an optional parsed YAML document.
#[derive(Debug, Default)]
pub struct Source {
    env: HashMap<String, String>,
    yaml: Option<serde_norway::Value>,
    yaml_path: Option<PathBuf>,
}

impl Source {
    /// A source over the given environment and YAML document (tests build it directly).
    pub fn new(env: HashMap<String, String>, yaml: Option<(PathBuf, serde_norway::Value)>) -> Self {
        let (yaml_path, yaml) = match yaml {
            Some((path, value)) => (Some(path), Some(value)),
            None => (None, None),
        };
        Self {
            env,
            yaml,
            yaml_path,
        }
    }

    /// The process environment and, when it exists, the YAML file at `path`.
    ///
    /// `explicit` says the user named the file: then a missing file is an error; otherwise a
    /// missing default `config.yml` just means "environment only".
    pub fn from_process(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let yaml = match std::fs::read_to_string(path) {
            Ok(text) => Some((path.to_path_buf(), parse_yaml(path, &text)?)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => None,
            Err(err) => {
                return Err(ConfigError::new(
                    "config file",
                    format!("cannot read {}: {err}", path.display()),
                ));
            }
        };
        Ok(Self::new(env, yaml))
    }

    /// The raw value of `setting`: its environment variable if set, else its first YAML path
    /// present in the file. An empty environment value counts as set (pycti does the same).
    pub fn get(&self, setting: &Setting) -> Option<Raw> {
        if let Some(value) = self.env.get(setting.env) {
            return Some(Raw {
                value: value.clone(),
                origin: setting.env.to_string(),
            });
        }
        let yaml = self.yaml.as_ref()?;
        setting.yaml.iter().find_map(|path| {
            let node = path.iter().try_fold(yaml, |node, key| node.get(*key))?;
            let value = yaml_scalar(node)?;
            let file = self
                .yaml_path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "config file".to_string());
            Some(Raw {
                value,
                origin: format!("{} ({file})", path.join(".")),
            })
        })
    }
}

fn parse_yaml(path: &Path, text: &str) -> Result<serde_norway::Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(serde_norway::Value::Null);
    }
    serde_norway::from_str(text).map_err(|err| {
        ConfigError::new(
            "config file",
            format!("{} is not valid YAML: {err}", path.display()),
        )
    })
}

/// YAML scalars as text; `null` and `~` mean "not set"; maps and lists are not values.
fn yaml_scalar(node: &serde_norway::Value) -> Option<String> {
    match node {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings;

    fn source(env: &[(&str, &str)], yaml: &str) -> Source {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let yaml = serde_norway::from_str(yaml).ok();
        Source::new(env, yaml.map(|y| (PathBuf::from("config.yml"), y)))
    }

    #[test]
    fn environment_wins_over_yaml() {
        let src = source(
            &[("OPENCTI_URL", "http://env")],
            "opencti:\n  url: http://yaml\n",
        );
        let raw = src.get(&settings::OPENCTI_URL);
        assert_eq!(raw.map(|r| r.value).as_deref(), Some("http://env"));
    }

    #[test]
    fn yaml_numbers_and_both_write_interval_spellings_are_read() {
        let src = source(&[], "write_every_sec: 15\n");
        let raw = src
            .get(&settings::WRITE_EVERY_SEC)
            .map(|r| (r.value, r.origin));
        assert_eq!(
            raw,
            Some(("15".to_string(), "write_every_sec (config.yml)".to_string()))
        );
        let src = source(&[], "write:\n  every_sec: 5\nwrite_every_sec: 15\n");
        assert_eq!(
            src.get(&settings::WRITE_EVERY_SEC)
                .map(|r| r.value)
                .as_deref(),
            Some("5")
        );
    }

    #[test]
    fn yaml_null_is_unset() {
        let src = source(&[], "connector:\n  live_stream_id: ~\n");
        assert_eq!(src.get(&settings::CONNECTOR_LIVE_STREAM_ID), None);
    }
}

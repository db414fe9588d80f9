//! Secrets in memory (issue 13, part 3). A [`Secret`] prints as `***` through `Debug` and
//! `Display`, so a configuration or a struct holding one can be logged or shown in an error
//! without leaking it; the value is reached only by [`Secret::expose`], where it is used.
//! Secrets come from files (`*_FILE` settings, Kubernetes Secret volumes), never from a command
//! line: [`read_file`] reads one.
use std::{fmt, path::Path};

use serde::Deserialize;

/// A value that must not be printed.
#[derive(Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The value, for the one place that uses it (a connection, a signature).
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads a secret from `path`: the whole file, without the line break an editor or `echo`
/// leaves at its end. An empty file is refused (an unset secret would be worse than an error).
pub fn read_file(path: &Path) -> Result<Secret<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.trim().is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    Ok(Secret(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    struct Holder {
        name: &'static str,
        password: Secret<String>,
    }

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2-hunter2".to_owned());
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s:#?}"), "***");
        let held = Holder {
            name: "db",
            password: s.clone(),
        };
        let printed = format!("{held:?} {held:#?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("db"));
        assert_eq!(s.expose(), "hunter2-hunter2");
        let parsed: Secret<String> = serde_json::from_str("\"from-config\"").unwrap();
        assert_eq!(parsed.expose(), "from-config");
        assert_eq!(format!("{parsed:?}"), "***");
    }

    #[test]
    fn a_secret_file_loses_its_final_line_break_and_may_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("thali-secret-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "s3cret with spaces \r\n").unwrap();
        assert_eq!(read_file(&path).unwrap().expose(), "s3cret with spaces ");
        std::fs::write(&path, "two\nlines\n").unwrap();
        assert_eq!(read_file(&path).unwrap().expose(), "two\nlines");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_file(&path).unwrap_err().contains("empty"));
        assert!(read_file(&dir.join("absent")).unwrap_err().contains("absent"));
    }
}

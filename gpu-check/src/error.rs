//! Why a step of the GPU check failed. Every error about a file names it.

use std::path::{Path, PathBuf};

/// An error of the build or the run half.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file that does not parse, or does not have the expected fields.
    #[error("{}: not a valid {what}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What it should have held.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A data file of the wrong length, or a value that makes no sense.
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A case of the manifest that cannot be run as written.
    #[error("case `{case}`: {message}")]
    BadCase {
        /// The case's id.
        case: String,
        /// What is wrong.
        message: String,
    },
    /// A runtime call failed (a launch, an allocation, a validation).
    #[error(transparent)]
    Runtime(#[from] attnforge_runtime::RuntimeError),
    /// A device could not be opened.
    #[error("cannot open the {driver} device: {message}")]
    Device {
        /// Which driver.
        driver: &'static str,
        /// Why.
        message: String,
    },
    /// A bad command line.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A malformed data file.
    pub fn bad_file(path: &Path, message: impl Into<String>) -> Error {
        Error::BadFile {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// A case that cannot run.
    pub fn bad_case(case: &str, message: impl Into<String>) -> Error {
        Error::BadCase {
            case: case.to_string(),
            message: message.into(),
        }
    }
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Writes a whole file, creating its folder.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T, Error> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// Writes a value as pretty JSON.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let text = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        what: "JSON value",
        source,
    })?;
    write(path, &text)
}

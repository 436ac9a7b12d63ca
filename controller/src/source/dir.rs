//! Fleet files from a directory of the file system.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{is_fleet_file, FleetFile, FleetFiles, SourceError};

/// Reads every `*.yaml` / `*.yml` file under `root`, recursively. Hidden entries (names
/// starting with `.`, such as `.git`) are skipped. Paths are relative to `root`.
pub fn read_dir(root: &Path) -> Result<FleetFiles, SourceError> {
    let meta = fs::metadata(root).map_err(|source| SourceError::Io { path: root.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(SourceError::NotADirectory { path: root.to_owned() });
    }
    let mut found = Vec::new();
    collect(root, "", &mut found)?;
    // Reading is mostly copying out of the page cache: worth both cores for a large fleet.
    let files = found
        .into_par_iter()
        .map(|(relative, path)| match fs::read(&path) {
            Ok(contents) => Ok(FleetFile { path: relative.into(), contents: contents.into() }),
            Err(source) => Err(SourceError::Io { path, source }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FleetFiles::new(files))
}

/// Finds the fleet files under `dir`: their paths relative to the root, and on disk.
fn collect(dir: &Path, prefix: &str, files: &mut Vec<(String, PathBuf)>) -> Result<(), SourceError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SourceError::Io { path, source }
    };
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        // Non-UTF-8 names cannot be fleet files (nor hold them in a portable repository).
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links, like a checkout would present them.
        let file_type = fs::metadata(&path).map_err(io(&path))?.file_type();
        let relative = format!("{prefix}{name}");
        if file_type.is_dir() {
            collect(&path, &format!("{relative}/"), files)?;
        } else if file_type.is_file() && is_fleet_file(name) {
            files.push((relative, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yaml_recursively_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("groups/eu")).unwrap();
        fs::create_dir_all(root.join(".git")).unwrap();
        fs::write(root.join("groups/eu/sites.yaml"), "a: 1").unwrap();
        fs::write(root.join("releases.yml"), "b: 2").unwrap();
        fs::write(root.join("README.md"), "not fleet").unwrap();
        fs::write(root.join(".git/config.yaml"), "hidden").unwrap();
        let files = read_dir(root).unwrap();
        let paths: Vec<_> = files.files().iter().map(|f| &*f.path).collect();
        assert_eq!(paths, ["groups/eu/sites.yaml", "releases.yml"]);
        assert_eq!(&*files.files()[0].contents, b"a: 1");
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_dir(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, SourceError::Io { .. }), "{err}");
        fs::write(dir.path().join("f.yaml"), "").unwrap();
        let err = read_dir(&dir.path().join("f.yaml")).unwrap_err();
        assert!(matches!(err, SourceError::NotADirectory { .. }), "{err}");
    }
}

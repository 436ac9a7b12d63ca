//! Fleet files from a directory of the file system.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{is_fleet_file, FleetFile, FleetFiles, SourceError};

/// Reads every `*.yaml` / `*.yml` file under `root`, recursively. Hidden entries (names
/// starting with `.`, such as `.git`) are skipped. Paths are relative to `root`.
///
/// Symbolic links under `root` are never followed, neither to read a file nor to look at
/// what they point to: a link could lead out of the repository (to a secret that a
/// pull request would then print) or into a loop. They are listed in
/// [`FleetFiles::links`] for the compiler to report. `root` itself may be a link: the
/// user named it.
pub fn read_dir(root: &Path) -> Result<FleetFiles, SourceError> {
    let meta = fs::metadata(root).map_err(|source| SourceError::Io { path: root.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(SourceError::NotADirectory { path: root.to_owned() });
    }
    let mut found = Found::default();
    collect(root, "", &mut found)?;
    // Reading is mostly copying out of the page cache: worth both cores for a large fleet.
    let files = found
        .files
        .into_par_iter()
        .map(|(relative, path)| match read_regular_file(&path) {
            Ok(contents) => Ok(FleetFile { path: relative.into(), contents: contents.into() }),
            Err(source) => Err(SourceError::Io { path, source }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FleetFiles::new(files).with_links(found.links))
}

/// Reads a file that was a regular file when it was listed. On Unix it is opened with
/// `O_NOFOLLOW`, so a file swapped for a link in between is refused, not followed.
fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let mut contents = Vec::new();
    std::io::Read::read_to_end(&mut options.open(path)?, &mut contents)?;
    Ok(contents)
}

/// What [`collect`] found: fleet files (relative path, path on disk) and the relative
/// paths of symbolic links.
#[derive(Default)]
struct Found {
    files: Vec<(String, PathBuf)>,
    links: Vec<String>,
}

/// Finds the fleet files and symbolic links under `dir`.
fn collect(dir: &Path, prefix: &str, found: &mut Found) -> Result<(), SourceError> {
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
        // The entry's own type, as the directory lists it: a link is not followed.
        let file_type = entry.file_type().map_err(io(&path))?;
        let relative = format!("{prefix}{name}");
        if file_type.is_symlink() {
            found.links.push(relative);
        } else if file_type.is_dir() {
            collect(&path, &format!("{relative}/"), found)?;
        } else if file_type.is_file() && is_fleet_file(name) {
            found.files.push((relative, path));
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
    fn symbolic_links_are_listed_not_followed() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret.yaml"), "kind: Secret").unwrap();
        fs::create_dir(outside.path().join("more")).unwrap();
        fs::write(outside.path().join("more/devices.yaml"), "kind: DeviceSet").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("groups")).unwrap();
        fs::write(root.join("groups/eu.yaml"), "a: 1").unwrap();
        symlink(outside.path().join("secret.yaml"), root.join("groups/secret.yaml")).unwrap();
        symlink(outside.path().join("more"), root.join("more")).unwrap();
        symlink("loop.yaml", root.join("loop.yaml")).unwrap();
        symlink("a", root.join("b")).unwrap();
        symlink("b", root.join("a")).unwrap();
        let files = read_dir(root).unwrap();
        let paths: Vec<_> = files.files().iter().map(|f| &*f.path).collect();
        assert_eq!(paths, ["groups/eu.yaml"]);
        let links: Vec<_> = files.links().iter().map(|l| &**l).collect();
        assert_eq!(links, ["a", "b", "groups/secret.yaml", "loop.yaml", "more"]);
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

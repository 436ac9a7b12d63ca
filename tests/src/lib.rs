//! The end-to-end tests' shared support, used by every test binary in `tests/tests/`:
//! the real `waveguide` binary and the checkout it belongs to, git repositories and
//! servers (git daemon, smart HTTP, sshd), PostgreSQL, the fleets under `tests/data/`,
//! and per-area helpers in the modules below.

pub mod agent;
pub mod fleets;
pub mod k8s_fake;
pub mod k8s_scene;
pub mod kube;
pub mod postgres;
pub mod run;
pub mod tuf;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The root of the Waveguide checkout.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the checkout").to_owned()
}

/// The `waveguide` binary the tests run: `$WAVEGUIDE_BIN` when set (`scripts/test` builds
/// the binary once before the tests and exports it, as the Python checks use it too),
/// otherwise built once per test process through cargo, with the profile of the tests
/// (cargo only exposes `CARGO_BIN_EXE_*` to the package that owns the binary).
///
/// The build selects this package as well as `waveguide`, so that cargo resolves the
/// same features as for the test build (this package's dependencies turn on tokio's
/// `test-util`, through `tower-test`) and reuses the dependencies the tests were built
/// with, instead of building tokio, hyper, kube and sqlx a second time.
pub fn waveguide_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("WAVEGUIDE_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "WAVEGUIDE_BIN={} is not a file", bin.display());
            return bin;
        }
        escargot::CargoBuild::new()
            .manifest_path(repo_root().join("Cargo.toml"))
            .package("waveguide")
            .package(env!("CARGO_PKG_NAME"))
            .bin("waveguide")
            .current_release()
            .run()
            .expect("cargo builds the waveguide binary")
            .path()
            .to_owned()
    })
}

/// A `waveguide` command, run from the checkout's root.
pub fn waveguide() -> Command {
    let mut command = Command::new(waveguide_bin());
    command.current_dir(repo_root());
    command
}

/// Runs `waveguide` with `args` from the checkout's root.
pub fn run_waveguide(args: &[&str]) -> Output {
    waveguide().args(args).output().expect("waveguide runs")
}

/// Runs `git` in `dir` with a fixed identity and no signing; panics when it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=Fleet Operator",
            "-c",
            "user.email=ops@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}

/// Runs `git` in `dir` like [`git`] and returns its standard output, trimmed.
pub fn git_stdout(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Fleet Operator", "-c", "user.email=ops@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A `git daemon` serving every repository under a directory over git:// on 127.0.0.1,
/// stopped when dropped.
pub struct GitDaemon {
    /// The port it listens on.
    pub port: u16,
    _server: KillOnDrop,
}

impl GitDaemon {
    /// Starts the daemon on a free port and waits until it accepts connections.
    pub fn start(base: &Path) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let base = base.to_str().unwrap();
        // `git-daemon` itself, not the `git daemon` wrapper: killing the wrapper would leave
        // the server running.
        let exec_path = Command::new("git").arg("--exec-path").output().expect("git runs").stdout;
        let exec_path = PathBuf::from(String::from_utf8(exec_path).unwrap().trim());
        let child = Command::new(exec_path.join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={base}"))
            .arg(base)
            .spawn()
            .expect("git daemon runs");
        let daemon = GitDaemon { port, _server: KillOnDrop(child) };
        wait_for_port(port);
        daemon
    }
}

/// A child process that is killed and reaped when dropped: the servers the tests start.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An OpenSSH server (`sshd` from the Debian package `openssh-server`) on 127.0.0.1,
/// accepting one client key for the current user, as a Git host over SSH does.
pub struct Sshd {
    /// The port it listens on.
    pub port: u16,
    /// The user to log in as: the one running the tests.
    pub user: String,
    /// The client's private key, which the server accepts.
    pub client_key: PathBuf,
    /// The server's host key, as a `known_hosts` line for 127.0.0.1 on this port.
    pub known_hosts_line: String,
    _server: KillOnDrop,
}

impl Sshd {
    /// Starts the server with keys made by `ssh-keygen` under `dir`.
    pub fn start(dir: &Path) -> Sshd {
        fs::create_dir_all(dir).unwrap();
        let keygen = |file: &str| {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", file, "-f"])
                .arg(dir.join(file))
                .status()
                .expect("ssh-keygen runs");
            assert!(status.success());
        };
        keygen("host_key");
        keygen("client_key");
        fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nPidFile {pid}\n",
                host_key = dir.join("host_key").display(),
                authorized = dir.join("authorized_keys").display(),
                pid = dir.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        // Run as root, sshd wants its privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");
        // sshd must be started by its absolute path.
        let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd is installed (Debian package openssh-server; scripts/test installs it)");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("sshd runs");
        let host_key = fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let host_key = host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        let server = Sshd {
            port,
            user: user.trim().to_owned(),
            client_key: dir.join("client_key"),
            known_hosts_line: format!("[127.0.0.1]:{port} {host_key}"),
            _server: KillOnDrop(child),
        };
        wait_for_port(port);
        server
    }
}

/// Waits up to 10 s until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Serves the repositories under `root` over smart HTTP on 127.0.0.1 through
/// `git http-backend` (run as a CGI program per request), requiring HTTP basic
/// authentication as `user`/`password`. Returns the port; the server lives as long as the
/// test's runtime.
pub async fn serve_git_http(root: &Path, user: &str, password: &str) -> u16 {
    use base64::Engine;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let expected = format!("Basic {credentials}");
    let root = root.to_owned();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: axum::body::Bytes| {
            let (root, expected) = (root.clone(), expected.clone());
            async move { git_http_backend(&root, &expected, method, uri, headers, body).await }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

async fn git_http_backend(
    root: &Path,
    expected_authorization: &str,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use tokio::io::AsyncWriteExt;

    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if header("authorization") != expected_authorization {
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", "Basic realm=\"fleet\"")], "")
            .into_response();
    }
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "fleet")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git http-backend runs");
    let mut stdin = child.stdin.take().unwrap();
    // Written from another task: the backend may answer before it has read everything.
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = child.wait_with_output().await.unwrap();
    let out = output.stdout;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (end, skip) = split.expect("a CGI response has headers");
    let mut response = axum::response::Response::new(axum::body::Body::from(out[end + skip..].to_vec()));
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap().parse().unwrap();
            *response.status_mut() = StatusCode::from_u16(code).unwrap();
        } else {
            response.headers_mut().insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(value).unwrap(),
            );
        }
    }
    response
}

/// Creates a new database on the test server and returns its URL.
pub async fn fresh_postgres_database() -> String {
    let admin = std::env::var("WAVEGUIDE_TEST_POSTGRES_URL").expect(
        "WAVEGUIDE_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts a throw-away PostgreSQL",
    );
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("wg_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let (base, _) = admin.rsplit_once('/').expect("URL with a database name");
    format!("{base}/{name}")
}

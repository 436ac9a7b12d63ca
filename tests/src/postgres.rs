//! A PostgreSQL server of a test's own (Debian's binaries, as `scripts/postgres` starts
//! the shared one), which the test may stop and start again under a running controller.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A server on 127.0.0.1 with its data under a temporary directory; stopped and removed
/// when dropped.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Postgres {
    /// Initialises and starts a server. Panics when PostgreSQL is not installed (Debian
    /// package `postgresql`; `scripts/postgres start` installs it).
    pub fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("postgres").exists())
            .max()
            .expect(
                "PostgreSQL is installed (Debian package postgresql; scripts/postgres start installs it)",
            );
        let dir = tempfile::Builder::new().prefix("waveguide-pg-").tempdir().unwrap();
        if is_root() {
            run(Command::new("chown").arg("postgres:").arg(dir.path()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Postgres { bin, dir, port };
        server.as_postgres(&server.bin.join("initdb"), |c| {
            c.arg("-D").arg(server.data()).args([
                "-U",
                "waveguide",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]);
        });
        server.start_again();
        server
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://waveguide@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: open connections are closed).
    pub fn stop(&self) {
        self.as_postgres(&self.bin.join("pg_ctl"), |c| {
            c.arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]);
        });
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        self.as_postgres(&self.bin.join("pg_ctl"), |c| {
            c.arg("-D").arg(self.data()).arg("-l").arg(self.dir.path().join("server.log"));
            c.args(["-w", "-t", "60", "-o", &options, "start"]);
        });
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a PostgreSQL program; see [`Postgres::command`].
    fn as_postgres(&self, program: &Path, args: impl FnOnce(&mut Command)) {
        let mut command = self.command(program);
        args(&mut command);
        run(&mut command);
    }

    /// A PostgreSQL program, run as the `postgres` user when the tests run as root, since
    /// PostgreSQL refuses to run as root.
    fn command(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    // SAFETY: getuid(2) cannot fail.
    unsafe { libc::getuid() == 0 }
}

fn run(command: &mut Command) {
    let output = command.output().expect("the PostgreSQL program runs");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

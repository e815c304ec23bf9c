//! Real `kvs` processes on free loopback ports, each in its own temporary directory.
//! Every process started here is killed when its handle drops.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Proc {
    pub name: String,
    pub port: u16,
    child: Child,
}

impl Proc {
    /// A process of another kind (a peer system such as etcd) under the same handle.
    pub fn adopt(name: &str, port: u16, child: Child) -> Proc {
        Proc { name: name.to_owned(), port, child }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Resident memory in bytes, from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// CPU time the process has used so far (all its threads, those that ended too;
    /// user and kernel): `utime + stime` from /proc/PID/stat, in the kernel's fixed
    /// USER_HZ of 100 ticks a second (10 ms resolution).
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(&self.child.id().to_string())
    }

    /// `kill -9`: no drain, no farewell to the peers.
    pub fn kill9(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> Result<()> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("{} did not stop within 30 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts `kvs` on `dir`; `seeds` are ports of running nodes; `extra` more flags.
pub fn start(kvs: &Path, name: &str, dir: &Path, seeds: &[u16], extra: &[&str]) -> Result<Proc> {
    start_on(kvs, name, dir, free_port()?, seeds, extra)
}

/// [`start`] on a port the caller chose.
pub fn start_on(
    kvs: &Path,
    name: &str,
    dir: &Path,
    port: u16,
    seeds: &[u16],
    extra: &[&str],
) -> Result<Proc> {
    // `KVS_BENCH_NODE_LOGS=DIR` keeps each node's log in DIR/NAME-PORT.log, at the level
    // in `KVS_BENCH_LOG_LEVEL` (default warn): what a stall investigation needs.
    let logs = std::env::var_os("KVS_BENCH_NODE_LOGS").map(std::path::PathBuf::from);
    let level = std::env::var("KVS_BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    let stderr = match &logs {
        Some(dir) => Stdio::from(
            std::fs::File::create(dir.join(format!("{name}-{port}.log")))
                .with_context(|| format!("cannot create a log in {}", dir.display()))?,
        ),
        None => Stdio::null(),
    };
    let mut command = Command::new(kvs);
    command
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-name",
            name,
            "--log-level",
            &level,
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if !seeds.is_empty() {
        let seeds: Vec<String> = seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        command.args(["--seeds", &seeds.join(",")]);
    }
    let child = command.spawn().with_context(|| format!("cannot start {}", kvs.display()))?;
    Ok(Proc { name: name.to_owned(), port, child })
}

/// Polls `/health/ready` until 200; returns how long it took.
pub async fn wait_ready(
    http: &reqwest::Client,
    proc: &Proc,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let url = format!("{}/health/ready", proc.base());
    loop {
        if let Ok(reply) = http.get(&url).send().await {
            if reply.status().is_success() {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > timeout {
            bail!("{} not ready after {timeout:?}", proc.name);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bytes on disk under `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Each process's CPU time so far.
pub fn cpu_times(procs: &[Proc]) -> Result<Vec<Duration>> {
    procs
        .iter()
        .map(|proc| proc.cpu_time().with_context(|| format!("no CPU time for {}", proc.name)))
        .collect()
}

/// Each process's CPU time since `before` (from [`cpu_times`]).
pub fn cpu_spent(procs: &[Proc], before: &[Duration]) -> Result<Vec<Duration>> {
    let now = cpu_times(procs)?;
    Ok(now.iter().zip(before).map(|(now, before)| now.saturating_sub(*before)).collect())
}

/// `cpu` per write in `latencies` (one per write), in µs.
pub fn per_write(cpu: Duration, latencies: &[Duration]) -> f64 {
    cpu.as_secs_f64() * 1e6 / latencies.len().max(1) as f64
}

/// CPU time the bench itself has used so far (its load generators and readers), as
/// [`Proc::cpu_time`] counts it.
pub fn own_cpu_time() -> Result<Duration> {
    cpu_time_of("self").context("no CPU time for the bench itself")
}

/// `utime + stime` of `/proc/{pid}/stat`.
fn cpu_time_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, and it may hold spaces) come fields 3
    // onwards; utime and stime are fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

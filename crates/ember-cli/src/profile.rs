//! A sampling CPU profile of the whole `ember` process, for developers (cargo feature
//! `profile`, built by scripts/build-gpu.sh; not in `full`). Issue 16 needs to know where the
//! one busy host thread of a CubeCL decode spends its time on the lent GPU machine, which has
//! no `perf`: pprof-rs samples every thread by CPU time (SIGPROF) from inside the process.
//!
//! `EMBER_PPROF=FILE` writes the samples as collapsed stacks, one line per distinct stack,
//! `thread;outermost;...;innermost COUNT` (the format of flamegraph.pl and inferno), when
//! the command returns. `EMBER_PPROF_DELAY=SECONDS` (default 0) starts sampling that late, to
//! leave kernel compilation and warm-up out; `EMBER_PPROF_HZ` (default 997) sets the rate.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The profiler while it samples: started on its own thread after the delay.
static GUARD: Mutex<Option<pprof::ProfilerGuard<'static>>> = Mutex::new(None);

/// Starts sampling if `EMBER_PPROF` is set (after `EMBER_PPROF_DELAY` seconds).
pub fn start() -> Result<()> {
    if std::env::var_os("EMBER_PPROF").is_none() {
        return Ok(());
    }
    let seconds = |name: &str, default: f64| -> Result<f64> {
        std::env::var(name).map_or(Ok(default), |v| {
            v.parse()
                .with_context(|| format!("{name}={v:?} is not a number"))
        })
    };
    let delay = seconds("EMBER_PPROF_DELAY", 0.0)?;
    if !(delay.is_finite() && delay >= 0.0) {
        bail!("EMBER_PPROF_DELAY={delay} is not a number of seconds >= 0");
    }
    let delay = Duration::from_secs_f64(delay);
    let hz = seconds("EMBER_PPROF_HZ", 997.0)?;
    if !(1.0..=10_000.0).contains(&hz) {
        bail!("EMBER_PPROF_HZ={hz} is not a rate from 1 to 10000 samples per second");
    }
    let hz = hz as i32;
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        match pprof::ProfilerGuardBuilder::default()
            .frequency(hz)
            .blocklist(&["libgcc"])
            .build()
        {
            Ok(guard) => *GUARD.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard),
            Err(e) => eprintln!("EMBER_PPROF: the profiler did not start: {e}"),
        }
    });
    Ok(())
}

/// Writes the collapsed stacks to `EMBER_PPROF` if sampling ran.
pub fn finish() -> Result<()> {
    let Some(path) = std::env::var_os("EMBER_PPROF") else {
        return Ok(());
    };
    let Some(guard) = GUARD.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        eprintln!("EMBER_PPROF: no samples (the command ended before EMBER_PPROF_DELAY)");
        return Ok(());
    };
    let report = guard
        .report()
        .build()
        .context("EMBER_PPROF: building the report")?;
    let mut out = String::new();
    for (frames, count) in &report.data {
        out.push_str(&frames.thread_name_or_id().replace([';', ' '], "_"));
        // pprof lists the innermost frame first; collapsed stacks start at the outermost.
        for symbols in frames.frames.iter().rev() {
            for symbol in symbols.iter().rev() {
                let _ = write!(out, ";{}", symbol.name().replace([';', ' '], "_"));
            }
        }
        let _ = writeln!(out, " {count}");
    }
    std::fs::write(&path, out).with_context(|| format!("EMBER_PPROF: writing {path:?}"))?;
    eprintln!(
        "EMBER_PPROF: {} stacks written to {path:?}",
        report.data.len()
    );
    Ok(())
}

//! Bench results: one [`Record`] per (run, test), written as a Markdown table, JSON, CSV and
//! an SVG chart. Field names follow llama-bench's JSON where the two overlap.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One row of the results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Who ran it: `ember`, `pytorch` (transformers eager) or `llama.cpp`.
    pub engine: String,
    /// `ok`, `skipped` (cannot run here) or `failed` (ran and broke).
    pub status: String,
    /// Why a row was skipped or failed.
    pub reason: String,
    /// Git commit of the Ember build.
    pub build_commit: String,
    /// When the test ran (RFC 3339, UTC).
    pub test_time: String,
    /// The host CPU.
    pub cpu_info: String,
    /// The device the run used, as its backend names it.
    pub gpu_info: String,
    /// Model file or preset.
    pub model_filename: String,
    /// Architecture, size and dtype, e.g. `llama 135M F16`.
    pub model_type: String,
    /// Bytes of weights on the device.
    pub model_size: u64,
    /// Parameters.
    pub model_n_params: u64,
    /// The backend (`flex`, `candle`, `tch`, `wgpu`, `cuda`, or the baseline's).
    pub backends: String,
    /// Device name.
    pub device: String,
    /// Float type of weights and activations.
    pub dtype: String,
    /// Whether burn's fused attention op ran (llama-bench's `flash_attn`).
    pub flash_attn: bool,
    /// Whether decode steps were replayed as recorded CUDA graphs (`backend.graphs`).
    #[serde(default)]
    pub graphs: bool,
    /// Whether quantized weights stayed quantized on the device (`model.weights = "keep"`).
    #[serde(default)]
    pub weights_kept: bool,
    /// burn's kernel fusion: `on` (compiled into this backend), `n/a` (no such layer).
    pub fusion: String,
    /// CubeCL autotune level, or `n/a`.
    pub autotune: String,
    /// CPU threads asked for (0: one per core).
    pub n_threads: usize,
    /// Prompt tokens processed (pp test), else 0.
    pub n_prompt: usize,
    /// Tokens generated (tg test), else 0.
    pub n_gen: usize,
    /// Texts per batch of an embedding test (then `avg_ts` is texts per second), else 0.
    pub n_batch: usize,
    /// Mean time of one repetition.
    pub avg_ns: u64,
    /// Sample standard deviation of the time.
    pub stddev_ns: u64,
    /// Mean tokens per second.
    pub avg_ts: f64,
    /// Sample standard deviation of tokens per second.
    pub stddev_ts: f64,
    /// Each repetition's time.
    pub samples_ns: Vec<u64>,
    /// Each repetition's tokens per second.
    pub samples_ts: Vec<f64>,
    /// Each untimed warm-up repetition's time; the first is the cold start (on CubeCL
    /// backends with empty caches: kernel compilation and autotuning).
    #[serde(default)]
    pub warmup_ns: Vec<u64>,
    /// Time to first token of the pp test: prompt processing plus picking the token.
    pub ttft_ms: Option<f64>,
    /// Model load time in a fresh process.
    pub load_s_cold: Option<f64>,
    /// Load time of the same model again in that process.
    pub load_s_warm: Option<f64>,
    /// Peak memory of the run, in bytes.
    pub peak_mem: Option<u64>,
    /// What `peak_mem` measures.
    pub peak_mem_kind: String,
    /// Fraction of positions of the fixed text where the top-1 token equals the f32 run's.
    pub top1_vs_f32: Option<f64>,
    /// Largest absolute logit difference from the f32 run over the fixed text.
    pub max_logit_err: Option<f64>,
    /// Which run the two columns above compare with.
    pub accuracy_ref: String,
    /// Perplexity of the model on the fixed text.
    pub perplexity: Option<f64>,
    /// For f32 runs of a model with reference tokens: `ok`, or `WRONG` with the count.
    pub check: String,
    /// Speech tests: the clip transcribed (the test is `asr FILE`, and the rate columns
    /// count seconds of audio per second: 1 / the real-time factor); empty otherwise.
    #[serde(default)]
    pub audio_file: String,
    /// The clip's length, seconds.
    #[serde(default)]
    pub audio_s: Option<f64>,
    /// Real-time factor: mean time of a transcription (decoding the file included) over
    /// the audio's length; below 1 is faster than real time.
    #[serde(default)]
    pub rtf: Option<f64>,
    /// Mean encoder time per 30 s window, milliseconds (cross-attention keys and values
    /// included).
    #[serde(default)]
    pub encoder_ms: Option<f64>,
    /// Mean decoder tokens per second (generated tokens over decoder time).
    #[serde(default)]
    pub decoder_ts: Option<f64>,
    /// Word error rate of the transcript against the f32 row's of the same engine, backend
    /// and device (else the same engine's; `accuracy_ref` names it).
    #[serde(default)]
    pub wer_vs_f32: Option<f64>,
    /// Word error rate against the clip's reference transcript (faster-whisper's golden).
    #[serde(default)]
    pub wer_vs_reference: Option<f64>,
    /// The transcript.
    #[serde(default)]
    pub transcript: String,
}

impl Record {
    /// `pp512`, `tg128`, llama-bench's test names.
    pub fn test(&self) -> String {
        if !self.audio_file.is_empty() {
            return format!("asr {}", self.audio_file);
        }
        match (self.n_prompt, self.n_gen) {
            (p, 0) if p > 0 => format!("pp{p}"),
            (0, g) if g > 0 => format!("tg{g}"),
            (0, 0) if self.n_batch > 0 => format!("embed b{}", self.n_batch),
            (0, 0) => "-".into(),
            (p, g) => format!("pp{p}+tg{g}"),
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn mib(v: Option<u64>) -> String {
    v.map(|b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "-".into())
}

/// The row a reader compares `records[i]` with, by index, for the speedup column: for an
/// Ember row, a baseline of the same model and test (PyTorch in the same dtype, else any
/// baseline: llama.cpp runs the file's own type), else the first f32 Ember row of that model
/// and test with dequantized weights (the matrix's first target); `None` for baselines and
/// for the reference itself.
pub fn reference_rows(records: &[Record]) -> Vec<Option<usize>> {
    let ok = |r: &Record| r.status == "ok";
    let same =
        |a: &Record, b: &Record| a.model_filename == b.model_filename && a.test() == b.test();
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if !ok(r) || r.engine != "ember" {
                return None;
            }
            let candidates = || {
                records
                    .iter()
                    .enumerate()
                    .filter(|&(j, c)| j != i && ok(c) && same(c, r))
            };
            let baseline = candidates()
                .find(|(_, c)| c.engine != "ember" && c.dtype == r.dtype)
                .or_else(|| candidates().find(|(_, c)| c.engine != "ember"));
            let f32_row = || {
                records.iter().position(|c| {
                    ok(c)
                        && same(c, r)
                        && c.engine == "ember"
                        && c.dtype == "f32"
                        && !c.weights_kept
                })
            };
            baseline
                .map(|(j, _)| j)
                .or_else(|| f32_row().filter(|&j| j != i))
        })
        .collect()
}

/// The llama.cpp row of each Ember row's model and test, by index, where it is not already
/// the row [`reference_rows`] compares it with (a PyTorch baseline of the same dtype comes
/// first there): issue 16 asks every Ember row's ratio to llama.cpp beside its ratio to
/// PyTorch eager, from one run.
pub fn llama_cpp_rows(records: &[Record], refs: &[Option<usize>]) -> Vec<Option<usize>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.status != "ok" || r.engine != "ember" {
                return None;
            }
            records
                .iter()
                .position(|c| {
                    c.status == "ok"
                        && c.engine == "llama.cpp"
                        && c.model_filename == r.model_filename
                        && c.test() == r.test()
                })
                .filter(|&j| refs[i] != Some(j))
        })
        .collect()
}

/// `2.50x vs NAME`: `records[i]`'s rate over `records[j]`'s.
fn ratio(records: &[Record], i: usize, j: usize) -> String {
    let x = records[i].avg_ts / records[j].avg_ts.max(1e-12);
    // Two significant digits below 0.1x: a kept-weights decode is at 0.003x.
    let digits = if x < 0.1 { 3 } else { 2 };
    format!("{x:.digits$}x vs {}", short_name(&records[j]))
}

/// Index of the fastest row of each model and test (highest mean rate), all engines.
pub fn best_rows(records: &[Record]) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::new();
    for (i, r) in records.iter().enumerate().filter(|(_, r)| r.status == "ok") {
        let rival = best.iter_mut().find(|b| {
            let b = &records[**b];
            b.model_filename == r.model_filename && b.test() == r.test()
        });
        match rival {
            Some(b) if records[*b].avg_ts < r.avg_ts => *b = i,
            Some(_) => {}
            None => best.push(i),
        }
    }
    best
}

/// A short name of a row for the speedup column: `pytorch f32`, `llama.cpp`, `flex f32`.
fn short_name(r: &Record) -> String {
    match r.engine.as_str() {
        "ember" => format!("{} {}", r.backends, r.dtype),
        "llama.cpp" => "llama.cpp".into(),
        engine => format!("{engine} {}", r.dtype),
    }
}

/// The backend cell: the backend and what changes its speed (graph replay, kept weights).
fn backend_label(r: &Record) -> String {
    match (r.graphs, r.weights_kept) {
        (true, true) => format!("{} + graphs, weights kept", r.backends),
        (true, false) => format!("{} + graphs", r.backends),
        (false, true) => format!("{}, weights kept", r.backends),
        (false, false) => r.backends.clone(),
    }
}

/// The table printed at the end of a bench, in Markdown. `model` names the file and what it
/// stores (`llama 135M Q4_1`); `dtype` is the run's. `speedup` is the row's rate over the
/// row it is compared with ([`reference_rows`]), then over llama.cpp's row of the same model
/// and test when that is another ([`llama_cpp_rows`]); the fastest row of each model and
/// test has its rate in bold.
pub fn markdown(records: &[Record]) -> String {
    let mut out = String::from(
        "| model | engine | backend | device | dtype | threads | fa | test | t/s | speedup | 1st run s | ttft ms | peak mem | load s (cold/warm) | top-1 vs f32 | max logit err | ppl | check |\n\
         |---|---|---|---|---|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    let refs = reference_rows(records);
    let llama = llama_cpp_rows(records, &refs);
    let best = best_rows(records);
    for (i, r) in records.iter().enumerate() {
        let ts = if r.status == "ok" && best.contains(&i) {
            format!("**{:.2} ± {:.2}**", r.avg_ts, r.stddev_ts)
        } else if r.status == "ok" {
            format!("{:.2} ± {:.2}", r.avg_ts, r.stddev_ts)
        } else {
            format!("{}: {}", r.status, r.reason.replace('|', "/"))
        };
        let speedup = match (refs[i], llama[i]) {
            (Some(j), Some(k)) => format!("{}, {}", ratio(records, i, j), ratio(records, i, k)),
            (Some(j), None) | (None, Some(j)) => ratio(records, i, j),
            (None, None) => "-".into(),
        };
        let load = match (r.load_s_cold, r.load_s_warm) {
            (Some(c), Some(w)) => format!("{c:.2} / {w:.2}"),
            (Some(c), None) => format!("{c:.2}"),
            _ => "-".into(),
        };
        let model = if r.model_type.is_empty() {
            r.model_filename.clone()
        } else {
            format!("{} ({})", r.model_filename, r.model_type)
        };
        let threads = if r.engine == "ember" {
            r.n_threads.to_string()
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            model,
            r.engine,
            backend_label(r),
            r.device,
            r.dtype,
            threads,
            if r.flash_attn { 1 } else { 0 },
            r.test(),
            ts,
            speedup,
            opt(r.warmup_ns.first().map(|&ns| ns as f64 / 1e9), 2),
            opt(r.ttft_ms, 1),
            mib(r.peak_mem),
            load,
            r.top1_vs_f32
                .map(|v| format!("{:.1}%", v * 100.0))
                .unwrap_or_else(|| "-".into()),
            opt(r.max_logit_err, 4),
            opt(r.perplexity, 3),
            if r.check.is_empty() { "-" } else { &r.check },
        );
    }
    out.push_str(&speech_markdown(records));
    out
}

/// Characters of a transcript the speech table shows.
const TRANSCRIPT_CHARS: usize = 60;

/// The speech rows' own columns, as a second table under the first (empty without speech
/// rows): in the first table their rate is seconds of audio per second.
pub fn speech_markdown(records: &[Record]) -> String {
    let rows: Vec<&Record> = records
        .iter()
        .filter(|r| r.status == "ok" && !r.audio_file.is_empty())
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nSpeech (rate above: seconds of audio per second):\n\n\
         | model | engine | backend | device | dtype | clip | audio s | RTF | encoder ms/window | decoder t/s | peak mem | WER vs f32 | WER vs reference | transcript |\n\
         |---|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    let percent = |v: Option<f64>| {
        v.map(|v| format!("{:.1}%", v * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    for r in rows {
        let mut text: String = r.transcript.trim().chars().take(TRANSCRIPT_CHARS).collect();
        if r.transcript.trim().chars().count() > TRANSCRIPT_CHARS {
            text.push('…');
        }
        let wer_f32 = match (r.wer_vs_f32, r.dtype.as_str()) {
            (None, "f32") => "(reference)".to_string(),
            (v, _) => percent(v),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.model_filename,
            r.engine,
            backend_label(r),
            r.device,
            r.dtype,
            r.audio_file,
            opt(r.audio_s, 1),
            opt(r.rtf, 3),
            opt(r.encoder_ms, 0),
            opt(r.decoder_ts, 1),
            mib(r.peak_mem),
            wer_f32,
            percent(r.wer_vs_reference),
            text.replace('|', "/"),
        );
    }
    out
}

/// The CSV columns, in order (the JSON field names).
pub const CSV_COLUMNS: &[&str] = &[
    "engine",
    "status",
    "reason",
    "build_commit",
    "test_time",
    "cpu_info",
    "gpu_info",
    "model_filename",
    "model_type",
    "model_size",
    "model_n_params",
    "backends",
    "device",
    "dtype",
    "flash_attn",
    "graphs",
    "weights_kept",
    "fusion",
    "autotune",
    "n_threads",
    "n_prompt",
    "n_gen",
    "n_batch",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
    "samples_ns",
    "samples_ts",
    "warmup_ns",
    "ttft_ms",
    "load_s_cold",
    "load_s_warm",
    "peak_mem",
    "peak_mem_kind",
    "top1_vs_f32",
    "max_logit_err",
    "accuracy_ref",
    "perplexity",
    "check",
    "audio_file",
    "audio_s",
    "rtf",
    "encoder_ms",
    "decoder_ts",
    "wer_vs_f32",
    "wer_vs_reference",
    "transcript",
];

/// A JSON value as one CSV field's text: arrays joined by `;`, null empty.
fn csv_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().map(csv_text).collect::<Vec<_>>().join(";"),
        other => other.to_string(),
    }
}

/// The records as CSV (RFC 4180, by the `csv` crate) with a header line; arrays are
/// `;`-separated.
pub fn csv(records: &[Record]) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_COLUMNS)?;
    for r in records {
        let value =
            serde_json::to_value(r).map_err(|e| csv::Error::from(std::io::Error::other(e)))?;
        writer.write_record(CSV_COLUMNS.iter().map(|c| csv_text(&value[*c])))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| csv::Error::from(std::io::Error::other(e.to_string())))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Width of one character of the chart's 12 px monospace font (DejaVu Sans Mono and
/// Liberation Mono advance 0.6 em; a little more, so that no label reaches the bars).
pub const CHAR_W: f64 = 7.4;

/// What a test's rate counts.
fn unit(test: &str) -> &'static str {
    if test.starts_with("embed") {
        "texts/s"
    } else if test.starts_with("asr ") {
        "audio s/s = 1/RTF"
    } else {
        "tokens/s"
    }
}

/// A bar's label: the model, then who ran it in what.
fn chart_label(r: &Record) -> String {
    let engine = if r.engine == "ember" || r.backends.starts_with(&r.engine) {
        String::new()
    } else {
        format!("{} ", r.engine)
    };
    format!(
        "{} {engine}{} {} {}",
        r.model_filename,
        backend_label(r),
        r.device,
        r.dtype
    )
}

/// A horizontal bar chart of the rates (mean, with a ± stddev whisker), one panel per test,
/// one bar per run; the fastest bar of each model and test is marked `best`.
///
/// Written by hand rather than with `plotters`: a chart of labelled bars is ~60 lines of SVG
/// here, while plotters' SVG backend needs font metrics (its `ttf` feature, with fontconfig)
/// to size label areas and would still leave the label width to be chosen. With one
/// monospace font, a label's width is its length times [`CHAR_W`], so the label column is
/// sized to the longest label; `chart_fits_its_labels` checks every text's extent, and
/// README's bench section says how it was looked at rendered.
pub fn svg(records: &[Record]) -> String {
    let ok: Vec<(usize, &Record)> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == "ok")
        .collect();
    let mut tests: Vec<String> = ok.iter().map(|(_, r)| r.test()).collect();
    tests.sort();
    tests.dedup();
    let best = best_rows(records);
    let value_text = |i: usize, r: &Record| {
        let mark = if best.contains(&i) { " best" } else { "" };
        format!("{:.1}{mark}", r.avg_ts)
    };
    let width_of = |text: &str| text.chars().count() as f64 * CHAR_W;
    let (pad, bar_w, row_h, head_h) = (8.0, 420.0, 18.0, 28.0);
    let label_w = ok
        .iter()
        .map(|(_, r)| width_of(&chart_label(r)))
        .fold(0.0, f64::max)
        + 2.0 * pad;
    let values_w = ok
        .iter()
        .map(|(i, r)| width_of(&value_text(*i, r)))
        .fold(0.0, f64::max)
        + 2.0 * pad;
    let titles_w = tests
        .iter()
        .map(|t| width_of(&format!("{t} ({})", unit(t))) + 2.0 * pad)
        .fold(0.0, f64::max);
    let width = (label_w + bar_w + values_w).max(titles_w).ceil();
    let rows = tests.len() + ok.len();
    let height = (20.0 + rows as f64 * row_h + tests.len() as f64 * head_h).ceil();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let mut y = 20.0;
    for test in &tests {
        let group: Vec<&(usize, &Record)> = ok.iter().filter(|(_, r)| &r.test() == test).collect();
        let max = group
            .iter()
            .map(|(_, r)| r.avg_ts + r.stddev_ts)
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let _ = writeln!(
            out,
            "<text x=\"{pad}\" y=\"{}\" font-weight=\"bold\">{} ({})</text>",
            y + 14.0,
            escape(test),
            unit(test)
        );
        y += head_h;
        for &&(i, r) in &group {
            let w = r.avg_ts / max * bar_w;
            let (lo, hi) = (
                (r.avg_ts - r.stddev_ts).max(0.0) / max * bar_w,
                (r.avg_ts + r.stddev_ts) / max * bar_w,
            );
            let _ = writeln!(
                out,
                "<text x=\"{pad}\" y=\"{}\">{}</text>\n\
                 <rect x=\"{label_w}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/>\n\
                 <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
                 <text x=\"{:.1}\" y=\"{}\"{}>{}</text>",
                y + 12.0,
                escape(&chart_label(r)),
                y + 2.0,
                row_h - 4.0,
                if r.engine == "ember" {
                    "#d9622b"
                } else {
                    "#7f7f7f"
                },
                label_w + lo,
                label_w + hi,
                y + row_h / 2.0,
                y + row_h / 2.0,
                label_w + hi.max(w) + pad,
                y + 12.0,
                if best.contains(&i) {
                    " font-weight=\"bold\""
                } else {
                    ""
                },
                value_text(i, r)
            );
            y += row_h;
        }
        y += row_h;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, n_prompt: usize, n_gen: usize) -> Record {
        Record {
            engine: "ember".into(),
            status: status.into(),
            reason: if status == "ok" {
                String::new()
            } else {
                "no such device, really".into()
            },
            backends: "flex".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
            n_prompt,
            n_gen,
            avg_ts: 100.0,
            stddev_ts: 5.0,
            samples_ns: vec![1, 2],
            samples_ts: vec![1.5, 2.5],
            ..Record::default()
        }
    }

    #[test]
    fn test_names_follow_llama_bench() {
        assert_eq!(row("ok", 512, 0).test(), "pp512");
        assert_eq!(row("ok", 0, 128).test(), "tg128");
        let embed = Record {
            n_batch: 8,
            ..row("ok", 0, 0)
        };
        assert_eq!(embed.test(), "embed b8");
    }

    #[test]
    fn json_uses_llama_bench_field_names() {
        let value = serde_json::to_value(row("ok", 512, 0)).unwrap();
        for field in [
            "n_prompt",
            "n_gen",
            "avg_ts",
            "stddev_ts",
            "avg_ns",
            "stddev_ns",
            "samples_ts",
            "samples_ns",
            "backends",
            "model_type",
            "model_filename",
            "model_size",
            "model_n_params",
            "build_commit",
            "test_time",
            "cpu_info",
            "gpu_info",
            "n_threads",
            "flash_attn",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        assert_eq!(value["samples_ts"], serde_json::json!([1.5, 2.5]));
        let back: Record = serde_json::from_value(value).unwrap();
        assert_eq!(back, row("ok", 512, 0));
    }

    #[test]
    fn csv_has_every_column_once_per_row() {
        let text = csv(&[row("ok", 512, 0), row("skipped", 0, 128)]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].split(',').count(), CSV_COLUMNS.len());
        // Every JSON field is a column, and every column a JSON field.
        let value = serde_json::to_value(Record::default()).unwrap();
        let fields: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(fields.len(), CSV_COLUMNS.len());
        for c in CSV_COLUMNS {
            assert!(value.get(*c).is_some(), "{c} is not a field");
        }
        // The skip reason has a comma, so it is quoted; arrays join with `;`.
        assert!(lines[2].contains("\"no such device, really\""));
        assert!(lines[1].contains(",1;2,1.5;2.5,"));
    }

    #[test]
    fn csv_reads_back_whatever_a_reason_holds() {
        let mut odd = row("failed", 0, 128);
        odd.reason = "line one\r\nline \"two\", with a comma\rand a carriage return".into();
        let text = csv(&[odd.clone(), row("ok", 512, 0)]).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers().unwrap().clone();
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        let reason = headers.iter().position(|h| h == "reason").unwrap();
        assert_eq!(&rows[0][reason], odd.reason);
        assert_eq!(rows[1].len(), CSV_COLUMNS.len());
    }

    fn rate(engine: &str, backends: &str, dtype: &str, avg_ts: f64) -> Record {
        Record {
            engine: engine.into(),
            backends: backends.into(),
            dtype: dtype.into(),
            model_filename: "m.gguf".into(),
            avg_ts,
            ..row("ok", 512, 0)
        }
    }

    #[test]
    fn speedup_is_against_the_baseline_else_the_f32_row() {
        let rows = [
            rate("ember", "flex", "f32", 100.0),
            rate("ember", "flex", "f16", 50.0),
            rate("pytorch", "torch eager", "f32", 40.0),
            rate("pytorch", "torch eager", "f16", 25.0),
        ];
        assert_eq!(reference_rows(&rows), vec![Some(2), Some(3), None, None]);
        let table = markdown(&rows);
        assert!(table.contains("| 2.50x vs pytorch f32 |"), "{table}");
        assert!(table.contains("| 2.00x vs pytorch f16 |"), "{table}");
        // Without a baseline: the f32 row; the f32 row itself has nothing to compare with.
        let alone = &rows[..2];
        assert_eq!(reference_rows(alone), vec![None, Some(0)]);
        assert!(markdown(alone).contains("| 0.50x vs flex f32 |"));
        // llama.cpp runs the file's type: any baseline of the model and test serves.
        let llama = [
            rate("ember", "flex", "f32", 30.0),
            rate("llama.cpp", "llama-bench", "gguf", 60.0),
        ];
        assert!(markdown(&llama).contains("| 0.50x vs llama.cpp |"));
        // With PyTorch and llama.cpp both: the ratio to each, PyTorch's first; llama.cpp's
        // row of another test is not taken.
        let mut tg = rate("llama.cpp", "llama-bench", "gguf", 999.0);
        tg.n_gen = 128;
        let both = [
            rate("ember", "cuda", "f16", 50.0),
            rate("pytorch", "torch eager", "f16", 25.0),
            tg,
            rate("llama.cpp", "llama-bench", "gguf", 200.0),
        ];
        assert_eq!(reference_rows(&both)[0], Some(1));
        assert_eq!(
            llama_cpp_rows(&both, &reference_rows(&both)),
            vec![Some(3), None, None, None]
        );
        assert!(
            markdown(&both).contains("| 2.00x vs pytorch f16, 0.25x vs llama.cpp |"),
            "{}",
            markdown(&both)
        );
        // Where llama.cpp is the reference already, it is named once.
        assert_eq!(
            llama_cpp_rows(&llama, &reference_rows(&llama)),
            vec![None, None]
        );
        // Other tests and models are not compared.
        let mut other = rate("pytorch", "torch eager", "f32", 1.0);
        other.n_prompt = 128;
        assert_eq!(reference_rows(&[rows[0].clone(), other]), vec![None, None]);
    }

    #[test]
    fn the_fastest_row_of_each_test_is_marked() {
        let mut tg = rate("ember", "candle", "f32", 7.0);
        (tg.n_prompt, tg.n_gen) = (0, 128);
        let rows = [
            rate("ember", "flex", "f32", 100.0),
            rate("ember", "candle", "f32", 120.0),
            rate("pytorch", "torch eager", "f32", 110.0),
            tg,
        ];
        assert_eq!(best_rows(&rows), vec![1, 3]);
        let table = markdown(&rows);
        assert!(table.contains("| **120.00 ± 5.00** |"), "{table}");
        assert!(table.contains("| 100.00 ± 5.00 |"), "{table}");
        assert!(table.contains("| **7.00 ± 5.00** |"), "{table}");
        let chart = svg(&rows);
        assert_eq!(chart.matches(" best<").count(), 2, "{chart}");
    }

    /// Every `<text>` of an SVG: its x, whether it is end-anchored, and its text.
    fn texts(svg: &str) -> Vec<(f64, bool, String)> {
        svg.split("<text ")
            .skip(1)
            .map(|t| {
                let x: f64 = t["x=\"".len()..]
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let end = t.split('>').next().unwrap().contains("text-anchor=\"end\"");
                let body = t.split('>').nth(1).unwrap().split("</text").next().unwrap();
                let body = body
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&");
                (x, end, body)
            })
            .collect()
    }

    #[test]
    fn chart_fits_its_labels() {
        let mut long = rate("ember", "flex", "f32", 31.2);
        long.model_filename = "gemma-3-270m-q4_k_m-with-a-much-longer-file-name.gguf".into();
        long.weights_kept = true;
        long.graphs = true;
        let mut embed = rate("ember", "candle", "f16", 12345.6);
        (embed.n_prompt, embed.n_batch) = (0, 32);
        let rows = [
            long,
            rate("llama.cpp", "llama-bench", "gguf", 1102.5),
            embed,
        ];
        let chart = svg(&rows);
        let attr = |name: &str| -> f64 {
            let at = chart.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            chart[at..].split('"').next().unwrap().parse().unwrap()
        };
        let width = attr("width");
        let bars_x = attr("<rect x");
        for (x, end_anchored, text) in texts(&chart) {
            let w = text.chars().count() as f64 * CHAR_W;
            let (from, to) = if end_anchored { (x - w, x) } else { (x, x + w) };
            assert!(
                from >= 0.0 && to <= width,
                "`{text}` spans {from:.0}..{to:.0} of {width}"
            );
            if from < bars_x {
                assert!(to <= bars_x, "`{text}` runs into the bars at {bars_x}");
            }
        }
        assert!(chart.contains("embed b32 (texts/s)") && chart.contains("pp512 (tokens/s)"));
    }

    #[test]
    fn table_and_chart_show_skips_and_rates() {
        let rows = [row("ok", 512, 0), row("skipped", 0, 128)];
        let table = markdown(&rows);
        assert!(table.contains("100.00 ± 5.00"));
        assert!(table.contains("skipped: no such device, really"));
        let chart = svg(&rows);
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        assert!(chart.contains("pp512") && !chart.contains("tg128"));
    }
}

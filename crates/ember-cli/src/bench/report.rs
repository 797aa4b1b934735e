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
}

impl Record {
    /// `pp512`, `tg128`, llama-bench's test names.
    pub fn test(&self) -> String {
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

/// The table printed at the end of a bench, in Markdown.
pub fn markdown(records: &[Record]) -> String {
    let mut out = String::from(
        "| model | engine | backend | device | dtype | fa | test | t/s | 1st run s | ttft ms | peak mem | load s (cold/warm) | top-1 vs f32 | max logit err | ppl | check |\n\
         |---|---|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    for r in records {
        let ts = if r.status == "ok" {
            format!("{:.2} ± {:.2}", r.avg_ts, r.stddev_ts)
        } else {
            format!("{}: {}", r.status, r.reason.replace('|', "/"))
        };
        let load = match (r.load_s_cold, r.load_s_warm) {
            (Some(c), Some(w)) => format!("{c:.2} / {w:.2}"),
            (Some(c), None) => format!("{c:.2}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.model_filename,
            r.engine,
            match (r.graphs, r.weights_kept) {
                (true, true) => format!("{} + graphs, weights kept", r.backends),
                (true, false) => format!("{} + graphs", r.backends),
                (false, true) => format!("{}, weights kept", r.backends),
                (false, false) => r.backends.clone(),
            },
            r.device,
            r.dtype,
            if r.flash_attn { 1 } else { 0 },
            r.test(),
            ts,
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
];

fn csv_field(value: &serde_json::Value) -> String {
    let text = match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            items.iter().map(csv_field).collect::<Vec<_>>().join(";")
        }
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The records as CSV with a header line; arrays are `;`-separated.
pub fn csv(records: &[Record]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for r in records {
        let value = serde_json::to_value(r).expect("records serialize");
        let fields: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_field(&value[*c])).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart of tokens per second (mean, with a ± stddev whisker), one panel
/// per test, one bar per engine/backend/device/dtype.
pub fn svg(records: &[Record]) -> String {
    let ok: Vec<&Record> = records.iter().filter(|r| r.status == "ok").collect();
    let mut tests: Vec<String> = ok.iter().map(|r| r.test()).collect();
    tests.dedup();
    tests.sort();
    tests.dedup();
    let (label_w, bar_w, row_h, head_h) = (360.0, 420.0, 18.0, 28.0);
    let rows: usize = tests.len() + ok.len();
    let height = 20.0 + rows as f64 * row_h + tests.len() as f64 * head_h;
    let width = label_w + bar_w + 120.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let mut y = 20.0;
    for test in &tests {
        let group: Vec<&&Record> = ok.iter().filter(|r| &r.test() == test).collect();
        let max = group
            .iter()
            .map(|r| r.avg_ts + r.stddev_ts)
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"{}\" font-weight=\"bold\">{} (tokens/s)</text>",
            y + 14.0,
            escape(test)
        );
        y += head_h;
        for r in group {
            let label = format!(
                "{} {} {} {} {}",
                r.model_filename, r.engine, r.backends, r.device, r.dtype
            );
            let w = r.avg_ts / max * bar_w;
            let (lo, hi) = (
                (r.avg_ts - r.stddev_ts).max(0.0) / max * bar_w,
                (r.avg_ts + r.stddev_ts) / max * bar_w,
            );
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
                 <rect x=\"{label_w}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/>\n\
                 <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
                 <text x=\"{:.1}\" y=\"{}\">{:.1}</text>",
                label_w - 6.0,
                y + 12.0,
                escape(&label),
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
                label_w + hi.max(w) + 6.0,
                y + 12.0,
                r.avg_ts
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
        let text = csv(&[row("ok", 512, 0), row("skipped", 0, 128)]);
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

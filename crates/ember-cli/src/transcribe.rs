//! `ember transcribe`: speech to text with a Whisper model, through [`ember::Transcriber`].
//! The transcript goes to stdout (text, JSON lines, SRT or WebVTT); logs, the progress bar
//! and the summary with the real-time factor go to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ember::{BackendJob, EngineConfig, RuntimeInfo, Transcriber, Transcript};
use indicatif::{ProgressBar, ProgressStyle};

/// What `ember transcribe` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// The text, one line per file.
    #[default]
    Txt,
    /// One JSON object per file and line: file, language (and its probability), duration,
    /// text, segments.
    Json,
    /// SubRip subtitles (one file only).
    Srt,
    /// WebVTT subtitles (one file only).
    Vtt,
}

/// Audio at least this long gets a progress bar.
const PROGRESS_SECONDS: f64 = 30.0;

/// `seconds` as `HH:MM:SS` + `sep` + milliseconds (SRT: `,`, WebVTT: `.`).
pub fn timestamp(seconds: f64, sep: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{sep}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// `transcript` in `format` (`file` names it in JSON).
pub fn render(transcript: &Transcript, format: OutputFormat, file: &Path) -> String {
    match format {
        OutputFormat::Txt => format!("{}\n", transcript.text().trim()),
        OutputFormat::Json => {
            let segments: Vec<serde_json::Value> = transcript
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    serde_json::json!({
                        "id": i + 1, "start": s.start, "end": s.end,
                        "text": s.text, "tokens": s.tokens,
                    })
                })
                .collect();
            let json = serde_json::json!({
                "file": file.display().to_string(),
                "language": transcript.language,
                "language_probability": transcript.language_probability,
                "duration": transcript.stats.audio_seconds,
                "text": transcript.text(),
                "segments": segments,
            });
            format!("{json}\n")
        }
        OutputFormat::Srt | OutputFormat::Vtt => {
            let (sep, mut out) = if format == OutputFormat::Srt {
                (',', String::new())
            } else {
                ('.', "WEBVTT\n\n".to_string())
            };
            for (i, s) in transcript.segments.iter().enumerate() {
                if format == OutputFormat::Srt {
                    out.push_str(&format!("{}\n", i + 1));
                }
                out.push_str(&format!(
                    "{} --> {}\n{}\n\n",
                    timestamp(s.start, sep),
                    timestamp(s.end, sep),
                    s.text.trim()
                ));
            }
            out
        }
    }
}

/// The transcription of `files` on the backend the config chose.
pub struct TranscribeJob<'a> {
    /// Model, backend and `[transcribe]` settings.
    pub config: &'a EngineConfig,
    /// Audio files (`-`: stdin).
    pub files: &'a [PathBuf],
    /// What to print.
    pub format: OutputFormat,
}

impl TranscribeJob<'_> {
    /// Checks what the job can know before loading anything.
    pub fn check(&self) -> Result<()> {
        if self.files.is_empty() {
            bail!("no audio files: pass them as arguments (`-` reads stdin)");
        }
        if matches!(self.format, OutputFormat::Srt | OutputFormat::Vtt) {
            if self.files.len() > 1 {
                bail!("--format srt and vtt take one file at a time");
            }
            if !self.config.transcribe.timestamps {
                bail!("--format srt and vtt need timestamps (transcribe.timestamps = true)");
            }
        }
        if self.files.iter().filter(|f| f.as_os_str() == "-").count() > 1 {
            bail!("stdin (`-`) can be read once");
        }
        Ok(())
    }
}

impl BackendJob for TranscribeJob<'_> {
    type Output = Result<()>;

    fn run<B: burn::prelude::Backend>(
        self,
        device: B::Device,
        runtime: RuntimeInfo,
        capabilities: ember::Capabilities<B>,
    ) -> Result<()> {
        crate::backends::log_runtime(&runtime);
        let transcriber = Transcriber::<B>::load(self.config, &device, runtime, &capabilities)
            .context("cannot load the model")?;
        tracing::info!(
            "model {} | {:.1} MiB of weights | loaded in {:.2} s",
            transcriber.checkpoint().path().display(),
            transcriber.model().weights_bytes() as f64 / (1 << 20) as f64,
            transcriber.load_time().as_secs_f64()
        );
        let mut stdout = std::io::stdout().lock();
        for file in self.files {
            // Made at the first report, when the length is known (the file is streamed).
            let mut bar: Option<ProgressBar> = None;
            let transcript = transcriber.transcribe_file(
                file,
                &self.config.transcribe,
                &mut |done, total| {
                    if total < PROGRESS_SECONDS {
                        return;
                    }
                    let bar = bar.get_or_insert_with(|| {
                        ProgressBar::new((total * 10.0) as u64).with_style(
                            ProgressStyle::with_template(
                                "transcribing [{bar:30}] {msg} ({elapsed} elapsed, {eta} left)",
                            )
                            .expect("static template")
                            .progress_chars("=> "),
                        )
                    });
                    bar.set_position((done * 10.0) as u64);
                    bar.set_message(format!("{done:.0}/{total:.0} s"));
                },
            )?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let text = render(&transcript, self.format, file);
            // A reader that is gone (`... | head -c 10`) ends the run quietly.
            match stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
            {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                other => other?,
            }
            let s = &transcript.stats;
            let language = match &self.config.transcribe.language {
                Some(_) => format!("language {}", transcript.language),
                None if transcriber.model().is_multilingual() => format!(
                    "language {} (detected, probability {:.2})",
                    transcript.language, transcript.language_probability
                ),
                None => format!("language {} (English-only model)", transcript.language),
            };
            eprintln!(
                "{}: {language} | {:.1} s of audio in {:.2} s, real-time factor {:.3} | {} windows, encoder {:.0} ms/window | decoder {} tokens, {:.1} t/s | log-mel {:.0} ms",
                file.display(),
                s.audio_seconds,
                s.total.as_secs_f64(),
                s.real_time_factor(),
                s.windows,
                s.encode_per_window().as_secs_f64() * 1000.0,
                s.generated_tokens,
                s.decode_tps(),
                s.mel.as_secs_f64() * 1000.0,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_formatted_like_subtitles() {
        assert_eq!(timestamp(0.0, ','), "00:00:00,000");
        assert_eq!(timestamp(7.74, ','), "00:00:07,740");
        assert_eq!(timestamp(3725.5, '.'), "01:02:05.500");
    }
}

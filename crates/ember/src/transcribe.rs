//! [`Transcriber`]: a loaded Whisper model with its tokenizer, its suppression lists and the
//! log-mel front end, transcribing audio of any length by Whisper's sequential 30 s window
//! algorithm with timestamp seeking.
//!
//! The decoding rules are faster-whisper 1.2.1's (`transcribe.py`: `generate_segments`,
//! `_split_segments_by_timestamps`, `get_prompt`) over CTranslate2's greedy Whisper decoding
//! (`src/models/whisper.cc`: `suppress_tokens`, `suppress_blank`, `ApplyTimestampRules`),
//! since faster-whisper's transcripts are what the tests compare with: the same defaults
//! (timestamps on, the previous text as prompt, a window skipped as silence when its
//! no-speech probability is above 0.6 and its average log-probability below -1), temperature
//! 0 only (no fallback to sampling).

use std::path::Path;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::DType as BurnDType;
use serde::Deserialize;

use crate::audio::{Audio, AudioStream, LogMel, MelWindows, Spectrogram, WINDOW_FRAMES};
use crate::backend::Capabilities;
use crate::config::EngineConfig;
use crate::engine::RuntimeInfo;
use crate::error::{Error, Result};
use crate::format::safetensors::SafetensorsStore;
use crate::format::{Loader, TensorStore};
use crate::models::whisper::{CrossAttention, Ct2WhisperStore, Whisper, WhisperConfig};
use crate::models::{ensure_fits, Format, Logits, Opened, Task};
use crate::source::Checkpoint;

/// Seconds per timestamp token.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per encoder position (the stride of the second convolution).
const INPUT_STRIDE: usize = 2;
/// Seconds per mel frame.
const FRAME_SECONDS: f64 = 0.01;

/// Translate or transcribe (multilingual models only translate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpeechTask {
    /// Text in the spoken language.
    #[default]
    Transcribe,
    /// English text (multilingual models).
    Translate,
}

/// How to transcribe; the defaults are faster-whisper's.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranscribeOptions {
    /// Predict timestamp tokens (segments); without, one segment per window.
    pub timestamps: bool,
    /// The previous windows' text as the prompt of the next.
    pub condition_on_previous_text: bool,
    /// The spoken language (`en`, `de`, ...); `None` detects it on multilingual models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Transcribe or translate.
    pub task: SpeechTask,
    /// Latest first timestamp of a window, seconds.
    pub max_initial_timestamp: f64,
    /// A window whose no-speech probability is above this (and whose average log-probability
    /// is below `log_prob_threshold`) is skipped as silence; `None`: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_speech_threshold: Option<f32>,
    /// See `no_speech_threshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_prob_threshold: Option<f32>,
}

impl TranscribeOptions {
    /// Checks the values (a TOML file or flags set them).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.max_initial_timestamp >= 0.0 && self.max_initial_timestamp.is_finite()) {
            return Err(format!(
                "transcribe.max_initial_timestamp must be a finite number >= 0, got {}",
                self.max_initial_timestamp
            ));
        }
        for (key, value) in [
            ("no_speech_threshold", self.no_speech_threshold),
            ("log_prob_threshold", self.log_prob_threshold),
        ] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err(format!("transcribe.{key} must be finite"));
            }
        }
        if let Some(language) = &self.language {
            if language.is_empty() || !language.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!(
                    "transcribe.language `{language}` is not a language code such as `en`"
                ));
            }
        }
        Ok(())
    }
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            timestamps: true,
            condition_on_previous_text: true,
            language: None,
            task: SpeechTask::Transcribe,
            max_initial_timestamp: 1.0,
            no_speech_threshold: Some(0.6),
            log_prob_threshold: Some(-1.0),
        }
    }
}

/// A stretch of the transcript with its time span.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Segment {
    /// Start, seconds from the beginning of the audio.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Its text (leading space as Whisper writes it).
    pub text: String,
    /// Its token ids, timestamp tokens included.
    pub tokens: Vec<u32>,
}

/// Where the time of a transcription went.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TranscribeStats {
    /// Audio length, seconds.
    pub audio_seconds: f64,
    /// 30 s windows run through the encoder.
    pub windows: usize,
    /// The front end: decoding a streamed file and its log-mel spectrogram (both passes),
    /// or the spectrogram of audio held whole, and the windows' assembly.
    pub mel: Duration,
    /// The encoder, all windows (cross-attention keys and values included).
    pub encode: Duration,
    /// The decoder, all windows.
    pub decode: Duration,
    /// Tokens generated (end-of-text tokens included).
    pub generated_tokens: usize,
    /// Wall time of the whole transcription.
    pub total: Duration,
}

impl TranscribeStats {
    /// Real-time factor: processing time over audio time (below 1 is faster than real time).
    pub fn real_time_factor(&self) -> f64 {
        self.total.as_secs_f64() / self.audio_seconds.max(1e-9)
    }

    /// Generated tokens per second of decoder time.
    pub fn decode_tps(&self) -> f64 {
        self.generated_tokens as f64 / self.decode.as_secs_f64().max(1e-9)
    }

    /// Encoder time per window.
    pub fn encode_per_window(&self) -> Duration {
        self.encode / self.windows.max(1) as u32
    }
}

/// A transcription: its segments and timings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Transcript {
    /// Segments in order.
    pub segments: Vec<Segment>,
    /// The language (`en`, ...).
    pub language: String,
    /// The probability of the detected language (a softmax over the language tokens after
    /// `<|startoftranscript|>`, as faster-whisper reports it); 1 when the language was given
    /// or the model is English-only.
    pub language_probability: f64,
    /// Timings.
    pub stats: TranscribeStats,
}

impl Transcript {
    /// The whole text: the segments' texts joined.
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.text.as_str()).collect()
    }
}

/// The special tokens decoding needs, read from `tokenizer.json`.
#[derive(Debug, Clone)]
struct Specials {
    eot: u32,
    sot: u32,
    sot_prev: u32,
    no_timestamps: u32,
    timestamp_begin: u32,
    no_speech: Option<u32>,
    transcribe: Option<u32>,
    translate: Option<u32>,
    /// `(code, id)` of the language tokens (multilingual vocabularies).
    languages: Vec<(String, u32)>,
}

impl Specials {
    fn read(tokenizer: &tokenizers::Tokenizer, path: &Path) -> Result<Self> {
        let id = |token: &str| tokenizer.token_to_id(token);
        let need = |token: &str| {
            id(token)
                .ok_or_else(|| Error::model(path, format!("tokenizer.json has no `{token}` token")))
        };
        let no_timestamps = need("<|notimestamps|>")?;
        let sot = need("<|startoftranscript|>")?;
        let translate = id("<|translate|>");
        let languages = match translate {
            Some(translate) => (sot + 1..translate)
                .filter_map(|i| {
                    let token = tokenizer.id_to_token(i)?;
                    let code = token.strip_prefix("<|")?.strip_suffix("|>")?.to_string();
                    Some((code, i))
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(Self {
            eot: need("<|endoftext|>")?,
            sot,
            sot_prev: need("<|startofprev|>")?,
            no_timestamps,
            timestamp_begin: no_timestamps + 1,
            no_speech: id("<|nospeech|>").or_else(|| id("<|nocaptions|>")),
            transcribe: id("<|transcribe|>"),
            translate,
            languages,
        })
    }

    /// Checks that these ids fit a model of `vocab` tokens: Whisper's vocabulary ends with
    /// the 1501 timestamp tokens (0 to 30 s by 0.02 s) right after `<|notimestamps|>`, and a
    /// multilingual one (51865 tokens or more) has language tokens. A `tokenizer.json` of
    /// another Whisper model (English-only for multilingual or the reverse: every special id
    /// shifted by one) fails here instead of decoding wrong tokens.
    fn check(&self, vocab: usize, path: &Path) -> Result<()> {
        let end = self.timestamp_begin as usize + TIMESTAMP_TOKENS;
        if end != vocab {
            return Err(Error::model(
                path,
                format!(
                    "its special tokens do not fit the model: <|notimestamps|> is {}, so the \
                     {TIMESTAMP_TOKENS} timestamp tokens end at {end}, but the model's \
                     vocabulary has {vocab} tokens (a tokenizer.json of another Whisper model?)",
                    self.no_timestamps
                ),
            ));
        }
        if vocab >= MULTILINGUAL_VOCAB && (self.languages.is_empty() || self.transcribe.is_none()) {
            return Err(Error::model(
                path,
                format!(
                    "the model is multilingual ({vocab} tokens) but tokenizer.json has no \
                     language tokens between <|startoftranscript|> and <|translate|>, or no \
                     <|transcribe|>"
                ),
            ));
        }
        Ok(())
    }
}

/// Whisper's timestamp tokens: 0 to 30 s by 0.02 s.
const TIMESTAMP_TOKENS: usize = 1501;
/// The smallest multilingual vocabulary (English-only Whisper has 51864 tokens).
const MULTILINGUAL_VOCAB: usize = 51865;

/// Token suppression lists: CTranslate2's `config.json` (`suppress_ids`,
/// `suppress_ids_begin`) or Hugging Face's `generation_config.json` (`suppress_tokens`,
/// `begin_suppress_tokens`).
#[derive(Debug, Clone, Default)]
struct Suppress {
    always: Vec<u32>,
    begin: Vec<u32>,
}

impl Suppress {
    fn read(dir: &Path) -> Result<Self> {
        #[derive(Deserialize, Default)]
        struct Lists {
            #[serde(alias = "suppress_tokens")]
            suppress_ids: Option<Vec<i64>>,
            #[serde(alias = "begin_suppress_tokens")]
            suppress_ids_begin: Option<Vec<i64>>,
        }
        let ids = |v: Option<Vec<i64>>| -> Vec<u32> {
            v.unwrap_or_default()
                .into_iter()
                .filter_map(|i| u32::try_from(i).ok())
                .collect()
        };
        for name in ["generation_config.json", "config.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
            let lists: Lists = serde_json::from_str(&text)
                .map_err(|e| Error::model(&path, format!("invalid JSON: {e}")))?;
            if lists.suppress_ids.is_some() || lists.suppress_ids_begin.is_some() {
                return Ok(Self {
                    always: ids(lists.suppress_ids),
                    begin: ids(lists.suppress_ids_begin),
                });
            }
        }
        tracing::warn!(
            "{}: no suppress lists (generation_config.json or a CTranslate2 config.json); \
             decoding suppresses nothing",
            dir.display()
        );
        Ok(Self::default())
    }
}

/// One window's greedy decoding.
struct Generated {
    tokens: Vec<u32>,
    avg_logprob: f64,
    no_speech_prob: f64,
}

/// A loaded speech recognizer; immutable after load, shareable between threads.
#[derive(Debug)]
pub struct Transcriber<B: Backend> {
    model: Whisper<B>,
    tokenizer: tokenizers::Tokenizer,
    specials: Specials,
    suppress: Suppress,
    front_end: LogMel<B>,
    device: B::Device,
    dtype: BurnDType,
    runtime: RuntimeInfo,
    checkpoint: Checkpoint,
    load_time: Duration,
}

impl<B: Backend> Transcriber<B> {
    /// Fetches (if needed) and loads the Whisper model of `config.model` onto `device`: a
    /// CTranslate2 directory (`model.bin`) or a Hugging Face one (`config.json`,
    /// safetensors), each with its `tokenizer.json`.
    pub fn load(
        config: &EngineConfig,
        device: &B::Device,
        runtime: RuntimeInfo,
        capabilities: &Capabilities<B>,
    ) -> Result<Self> {
        let start = Instant::now();
        let dtype = runtime.dtype.to_burn().ok_or_else(|| {
            Error::Backend("the backend must resolve dtype = \"auto\" before loading".into())
        })?;
        let opened = Opened::open(&config.model)?;
        opened
            .architecture
            .expect_task(Task::Transcribe, opened.checkpoint.path())?;
        let (whisper_config, store, dir): (WhisperConfig, Box<dyn TensorStore + '_>, _) =
            match &opened.format {
                Format::Ct2 { dir, file } => {
                    let c = WhisperConfig::from_ct2(file)?;
                    let store = Ct2WhisperStore::new(file, c.d_model)?;
                    (c, Box::new(store), dir.clone())
                }
                Format::HfDir {
                    dir,
                    config_path,
                    config_text,
                } => (
                    WhisperConfig::from_json(config_text, config_path)?,
                    Box::new(SafetensorsStore::open(dir)?),
                    dir.clone(),
                ),
                _ => {
                    return Err(Error::model(
                        opened.checkpoint.path(),
                        "a Whisper model must be a CTranslate2 or a Hugging Face directory",
                    ))
                }
            };
        ensure_fits(
            &runtime.device,
            "the Whisper weights",
            whisper_config.param_count(),
            dtype.size(),
        )?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = crate::tokenizer::read_tokenizer_json(&tokenizer_path)?;
        let specials = Specials::read(&tokenizer, &tokenizer_path)?;
        specials.check(whisper_config.vocab_size, &tokenizer_path)?;
        let suppress = Suppress::read(&dir)?;
        let mut progress = |_: usize, _: usize| {};
        let loader = Loader::<B>::new(store.as_ref(), device, dtype, &mut progress)
            .with_fused(capabilities.fused.clone());
        let n_mels = whisper_config.num_mel_bins;
        let model = Whisper::load(whisper_config, &loader, config.backend.attention)?;
        loader.finish()?;
        drop(store);
        Ok(Self {
            model,
            tokenizer,
            specials,
            suppress,
            front_end: LogMel::new(n_mels, device),
            device: device.clone(),
            dtype,
            runtime,
            checkpoint: opened.checkpoint.clone(),
            load_time: start.elapsed(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Whisper<B> {
        &self.model
    }

    /// Backend, device and dtype.
    pub fn runtime(&self) -> &RuntimeInfo {
        &self.runtime
    }

    /// The checkpoint the weights came from.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Wall time of [`Transcriber::load`], fetching included.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The log-mel spectrogram of `audio` (what [`Transcriber::transcribe`] computes first).
    pub fn log_mel(&self, audio: &Audio) -> Result<Spectrogram> {
        self.front_end.compute(&audio.samples)
    }

    /// The encoder output `[1, 1500, d_model]` of the 30 s window of `mel` from frame
    /// `start` (`len` frames, the rest zero), in f32.
    pub fn encode_window(&self, mel: &Spectrogram, start: usize, len: usize) -> Tensor<B, 3> {
        let window = mel.window::<B>(start, len, &self.device, self.dtype);
        self.model
            .encode(window)
            .cast(burn::tensor::FloatDType::F32)
    }

    /// Teacher-forced greedy decoding of the first window of `mel`: after `prompt` and each
    /// prefix of `tokens`, the token greedy decoding (with its rules) picks, from one
    /// decoder pass over the whole sequence. When every pick is the next of `tokens` and the
    /// last is end-of-text, free-running greedy decoding gives exactly `tokens`: a check of
    /// a reference transcript that costs one decoder pass instead of one per token.
    pub fn greedy_choices(
        &self,
        mel: &Spectrogram,
        prompt: &[u32],
        tokens: &[u32],
        options: &TranscribeOptions,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::Backend("greedy_choices needs a prompt".into()));
        }
        let frames = WINDOW_FRAMES.min(mel.frames().saturating_sub(1));
        let window = mel.window::<B>(0, frames, &self.device, self.dtype);
        let cross = self.model.cross_attention(&self.model.encode(window));
        let mut cache = self.model.new_cache(&self.device);
        let mut sequence = prompt.to_vec();
        sequence.extend(tokens);
        let all = self
            .model
            .decode(&sequence, &cross, &mut cache, Logits::All)?;
        let [_, _, vocab] = all.dims();
        let max_initial = self.specials.timestamp_begin as usize
            + (options.max_initial_timestamp / TIME_PRECISION).round() as usize;
        (0..=tokens.len())
            .map(|i| {
                let at = prompt.len() - 1 + i;
                let mut logits = host_row(all.clone().slice([0..1, at..at + 1, 0..vocab]))?;
                self.apply_rules(
                    &mut logits,
                    &tokens[..i],
                    i,
                    options.timestamps,
                    max_initial,
                );
                Ok(argmax_first(&logits) as u32)
            })
            .collect()
    }

    /// The prompt of a file's first window: `<|startoftranscript|>` (and, on multilingual
    /// models, the language and task of `options`, English by default), then
    /// `<|notimestamps|>` without timestamps.
    pub fn first_prompt(&self, options: &TranscribeOptions) -> Vec<u32> {
        let s = &self.specials;
        let mut prompt = vec![s.sot];
        if self.model.is_multilingual() && !s.languages.is_empty() {
            let code = options.language.as_deref().unwrap_or("en");
            prompt.extend(
                s.languages
                    .iter()
                    .find(|(c, _)| c == code)
                    .map(|(_, id)| *id),
            );
            prompt.extend(match options.task {
                SpeechTask::Transcribe => s.transcribe,
                SpeechTask::Translate => s.translate,
            });
        }
        if !options.timestamps {
            prompt.push(s.no_timestamps);
        }
        prompt
    }

    /// Transcribes `audio` (held whole; [`Transcriber::transcribe_file`] streams a file);
    /// `progress(done, total)` gets the seconds transcribed so far.
    pub fn transcribe(
        &self,
        audio: &Audio,
        options: &TranscribeOptions,
        progress: &mut dyn FnMut(f64, f64),
    ) -> Result<Transcript> {
        let start = Instant::now();
        let mut stats = TranscribeStats {
            audio_seconds: audio.duration(),
            ..TranscribeStats::default()
        };
        let mel = self.front_end.compute(&audio.samples)?;
        stats.mel = start.elapsed();
        let mut window =
            |seek: usize, len: usize| Ok(mel.window::<B>(seek, len, &self.device, self.dtype));
        self.transcribe_windows(mel.frames(), &mut window, stats, start, options, progress)
    }

    /// Transcribes the audio file at `path` (`-`: stdin, first copied to a temporary file)
    /// with memory bounded whatever its length: the file is decoded, resampled and turned
    /// into log-mel frames a piece at a time, twice ([`MelWindows`]: the first pass finds
    /// the maximum the spectrogram is normalised by). The transcript equals
    /// [`Transcriber::transcribe`]'s of the whole file.
    pub fn transcribe_file(
        &self,
        path: &Path,
        options: &TranscribeOptions,
        progress: &mut dyn FnMut(f64, f64),
    ) -> Result<Transcript> {
        let start = Instant::now();
        let spooled = if path.as_os_str() == "-" {
            Some(Spooled::stdin()?)
        } else {
            None
        };
        let file = spooled.as_ref().map_or(path, |s| s.path.as_path());
        let mut mel = MelWindows::new(&self.front_end, || {
            AudioStream::open(file).map_err(|e| match (&spooled, e) {
                // Messages name stdin, not the temporary file.
                (Some(_), Error::Audio { message, .. }) => Error::Audio {
                    path: path.into(),
                    message,
                },
                (_, e) => e,
            })
        })?;
        let stats = TranscribeStats {
            audio_seconds: mel.duration(),
            mel: start.elapsed(),
            ..TranscribeStats::default()
        };
        let frames = mel.frames();
        let mut window = |seek: usize, len: usize| mel.window(seek, len, self.dtype);
        self.transcribe_windows(frames, &mut window, stats, start, options, progress)
    }

    /// The window loop of a transcription: `window(seek, len)` gives the mel window of
    /// `len` frames from frame `seek` (in increasing `seek`); `frames` counts the padding
    /// frame.
    fn transcribe_windows(
        &self,
        frames: usize,
        window: &mut dyn FnMut(usize, usize) -> Result<Tensor<B, 3>>,
        mut stats: TranscribeStats,
        start: Instant,
        options: &TranscribeOptions,
        progress: &mut dyn FnMut(f64, f64),
    ) -> Result<Transcript> {
        let content_frames = frames.saturating_sub(1);
        let total = content_frames as f64 * FRAME_SECONDS;
        let mut segments = Vec::new();
        let mut all_tokens: Vec<u32> = Vec::new();
        let mut prompt_reset_since = 0;
        let mut seek = 0;
        let mut cache = self.model.new_cache(&self.device);
        let (language, language_probability, sot) = if content_frames == 0 {
            (options.language.clone(), 1.0, Vec::new())
        } else {
            let t = Instant::now();
            // faster-whisper detects the language on the first 30 s of the features as
            // they come from the front end, the padding frame that decoding drops included
            // (WhisperModel.detect_language on features[..., :3000]).
            let mut detect = || -> Result<CrossAttention<B>> {
                let encoded = self.model.encode(window(0, frames.min(WINDOW_FRAMES))?);
                Ok(self.model.cross_attention(&encoded))
            };
            let (code, probability, tokens) = self.sot_sequence(
                options.language.as_deref(),
                options.task,
                &mut detect,
                &mut cache,
            )?;
            stats.encode += t.elapsed();
            (Some(code), probability, tokens)
        };
        while seek < content_frames {
            let time_offset = seek as f64 * FRAME_SECONDS;
            let segment_size = WINDOW_FRAMES.min(content_frames - seek);
            let segment_duration = segment_size as f64 * FRAME_SECONDS;
            let t = Instant::now();
            let window = window(seek, segment_size)?;
            stats.mel += t.elapsed();
            let t = Instant::now();
            let encoded = self.model.encode(window);
            let cross = self.model.cross_attention(&encoded);
            stats.encode += t.elapsed();
            stats.windows += 1;
            let t = Instant::now();
            let mut prompt = Vec::new();
            let previous = &all_tokens[prompt_reset_since..];
            if !previous.is_empty() {
                let keep = self.model.config().max_target_positions / 2 - 1;
                prompt.push(self.specials.sot_prev);
                prompt.extend(&previous[previous.len().saturating_sub(keep)..]);
            }
            prompt.extend(&sot);
            if !options.timestamps {
                prompt.push(self.specials.no_timestamps);
            }
            let result = self.generate(&cross, &prompt, options, &mut cache)?;
            stats.decode += t.elapsed();
            stats.generated_tokens += result.tokens.len() + 1;
            if let Some(threshold) = options.no_speech_threshold {
                let confident = options
                    .log_prob_threshold
                    .is_some_and(|lp| result.avg_logprob > f64::from(lp));
                if result.no_speech_prob > f64::from(threshold) && !confident {
                    seek += segment_size;
                    progress((seek.min(content_frames)) as f64 * FRAME_SECONDS, total);
                    continue;
                }
            }
            let (found, next_seek) = self.split(
                &result.tokens,
                time_offset,
                segment_size,
                segment_duration,
                seek,
            );
            seek = next_seek;
            for segment in found {
                let text = self.text(&segment.tokens)?;
                if segment.start == segment.end || text.trim().is_empty() {
                    continue;
                }
                all_tokens.extend(&segment.tokens);
                // A timestamp token can point past the end of the audio in its last window
                // (faster-whisper keeps it); segments stay within the audio.
                segments.push(Segment {
                    text,
                    start: segment.start.min(total),
                    end: segment.end.min(total),
                    ..segment
                });
            }
            if !options.condition_on_previous_text {
                prompt_reset_since = all_tokens.len();
            }
            progress(seek.min(content_frames) as f64 * FRAME_SECONDS, total);
        }
        stats.total = start.elapsed();
        Ok(Transcript {
            segments,
            language: language.unwrap_or_else(|| "en".into()),
            language_probability,
            stats,
        })
    }

    /// The text of `tokens` (timestamps and other special tokens left out).
    fn text(&self, tokens: &[u32]) -> Result<String> {
        let text: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|&t| t < self.specials.eot)
            .collect();
        self.tokenizer
            .decode(&text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// `<|startoftranscript|>` and, on multilingual models, the language (given, or
    /// detected on the cross-attention `detect` gives: the most likely language token after
    /// `<|startoftranscript|>`, its probability a softmax over the language tokens, as
    /// CTranslate2's `detect_language`) and the task; with the language and its probability.
    fn sot_sequence(
        &self,
        language: Option<&str>,
        task: SpeechTask,
        detect: &mut dyn FnMut() -> Result<CrossAttention<B>>,
        cache: &mut crate::nn::kv_cache::KvCache<B>,
    ) -> Result<(String, f64, Vec<u32>)> {
        let s = &self.specials;
        if !self.model.is_multilingual() || s.languages.is_empty() {
            if language.is_some_and(|l| l != "en") || task == SpeechTask::Translate {
                return Err(Error::Config {
                    path: "[transcribe]".into(),
                    message: "this model is English-only: it neither takes another language \
                              nor translates"
                        .into(),
                });
            }
            return Ok(("en".into(), 1.0, vec![s.sot]));
        }
        let (code, probability) = match language {
            Some(code) => (code.to_string(), 1.0),
            None => {
                let cross = detect()?;
                cache.clear();
                let logits = self.model.decode(&[s.sot], &cross, cache, Logits::Last)?;
                let logits = host_row(logits)?;
                let language_logits: Vec<f32> = s
                    .languages
                    .iter()
                    .map(|&(_, id)| logits[id as usize])
                    .collect();
                // The first of equal maxima, as CTranslate2's sort by probability keeps.
                let best = argmax_first(&language_logits);
                let probability = log_softmax(&language_logits)[best].exp();
                (s.languages[best].0.clone(), probability)
            }
        };
        let id = s
            .languages
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, id)| *id)
            .ok_or_else(|| Error::Config {
                path: "[transcribe] language".into(),
                message: format!(
                    "unknown language `{code}` (the model knows: {})",
                    s.languages
                        .iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let task_token = match task {
            SpeechTask::Transcribe => s.transcribe,
            SpeechTask::Translate => s.translate,
        };
        let mut tokens = vec![s.sot, id];
        tokens.extend(task_token);
        Ok((code, probability, tokens))
    }

    /// Greedy decoding of one window after `prompt` ([module docs](self) for the rules).
    fn generate(
        &self,
        cross: &CrossAttention<B>,
        prompt: &[u32],
        options: &TranscribeOptions,
        cache: &mut crate::nn::kv_cache::KvCache<B>,
    ) -> Result<Generated> {
        let s = &self.specials;
        let positions = self.model.config().max_target_positions;
        if prompt.len() >= positions {
            return Err(Error::Backend(format!(
                "the prompt is {} tokens; the decoder holds {positions}",
                prompt.len()
            )));
        }
        cache.clear();
        let all = self.model.decode(prompt, cross, cache, Logits::All)?;
        let [_, n, vocab] = all.dims();
        let sot_index = prompt.iter().position(|&t| t == s.sot).unwrap_or(0);
        let row = |i: usize| host_row(all.clone().slice([0..1, i..i + 1, 0..vocab]));
        let no_speech_prob = match s.no_speech {
            Some(id) if (id as usize) < vocab => {
                let logits = row(sot_index)?;
                softmax_at(&logits, id as usize)
            }
            _ => 0.0,
        };
        let mut logits = row(n - 1)?;
        let max_new = (positions / 2).min(positions - prompt.len());
        let max_initial = s.timestamp_begin as usize
            + (options.max_initial_timestamp / TIME_PRECISION).round() as usize;
        let timestamps = options.timestamps;
        let mut tokens: Vec<u32> = Vec::new();
        let mut sum_logprob = 0.0;
        for step in 0..max_new {
            self.apply_rules(&mut logits, &tokens, step, timestamps, max_initial);
            let log_probs = log_softmax(&logits);
            let best = argmax_first(&logits);
            sum_logprob += log_probs[best];
            let token = best as u32;
            if token == s.eot {
                break;
            }
            tokens.push(token);
            if step + 1 == max_new {
                break;
            }
            logits = host_row(self.model.decode(&[token], cross, cache, Logits::Last)?)?;
        }
        Ok(Generated {
            avg_logprob: sum_logprob / (tokens.len() + 1) as f64,
            tokens,
            no_speech_prob,
        })
    }

    /// Sets to `-inf` what may not come next: the suppressed tokens, the blank and
    /// end-of-text first, and with timestamps CTranslate2's `ApplyTimestampRules`.
    fn apply_rules(
        &self,
        logits: &mut [f32],
        generated: &[u32],
        step: usize,
        timestamps: bool,
        max_initial: usize,
    ) {
        let s = &self.specials;
        let vocab = logits.len();
        let hide = |range: std::ops::Range<usize>, logits: &mut [f32]| {
            for v in &mut logits[range.start.min(vocab)..range.end.min(vocab)] {
                *v = f32::NEG_INFINITY;
            }
        };
        for &t in &self.suppress.always {
            hide(t as usize..t as usize + 1, logits);
        }
        if step == 0 {
            for &t in &self.suppress.begin {
                hide(t as usize..t as usize + 1, logits);
            }
        }
        if !timestamps {
            return;
        }
        let begin = s.timestamp_begin as usize;
        let eot = s.eot as usize;
        hide(
            s.no_timestamps as usize..s.no_timestamps as usize + 1,
            logits,
        );
        let mut check_timestamp_mass = false;
        if step == 0 {
            hide(0..begin, logits);
            hide(max_initial + 1..vocab, logits);
        } else {
            let last = generated[step - 1] as usize;
            if last >= begin {
                let penultimate = if step >= 2 {
                    generated[step - 2] as usize
                } else {
                    last
                };
                if penultimate >= begin {
                    hide(begin..vocab, logits);
                } else {
                    hide(0..eot, logits);
                    check_timestamp_mass = true;
                }
            } else {
                check_timestamp_mass = true;
            }
            if let Some(&t) = generated.iter().rev().find(|&&t| t as usize >= begin) {
                hide(begin..t as usize, logits);
            }
        }
        if check_timestamp_mass {
            let log_probs = log_softmax(logits);
            let max_text = log_probs[..begin]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            if log_sum_exp(&log_probs[begin..]) > max_text {
                hide(0..begin, logits);
            }
        }
    }

    /// The window's segments and the next seek (faster-whisper's
    /// `_split_segments_by_timestamps`).
    fn split(
        &self,
        tokens: &[u32],
        time_offset: f64,
        segment_size: usize,
        segment_duration: f64,
        seek: usize,
    ) -> (Vec<Segment>, usize) {
        let begin = self.specials.timestamp_begin;
        let is_ts = |t: u32| t >= begin;
        let position = |t: u32| f64::from(t - begin);
        let n = tokens.len();
        let single_ending = n >= 2 && !is_ts(tokens[n - 2]) && is_ts(tokens[n - 1]);
        let consecutive: Vec<usize> = (1..n)
            .filter(|&i| is_ts(tokens[i]) && is_ts(tokens[i - 1]))
            .collect();
        let segment = |tokens: &[u32], start: f64, end: f64| Segment {
            start,
            end,
            text: String::new(),
            tokens: tokens.to_vec(),
        };
        if consecutive.is_empty() {
            let duration = match tokens.iter().rev().find(|&&t| is_ts(t)) {
                Some(&last) if last != begin => position(last) * TIME_PRECISION,
                _ => segment_duration,
            };
            let one = segment(tokens, time_offset, time_offset + duration);
            return (vec![one], seek + segment_size);
        }
        let mut slices = consecutive;
        if single_ending {
            slices.push(n);
        }
        let mut out = Vec::new();
        let mut last = 0;
        for &current in &slices {
            let part = &tokens[last..current];
            let start = time_offset + position(part[0]) * TIME_PRECISION;
            let end = time_offset + position(part[part.len() - 1]) * TIME_PRECISION;
            out.push(segment(part, start, end));
            last = current;
        }
        let next = if single_ending {
            seek + segment_size
        } else {
            seek + position(tokens[last - 1]) as usize * INPUT_STRIDE
        };
        (out, next)
    }
}

/// The words of `text` as word error rates compare them: split on whitespace, lowercased,
/// everything but letters, digits and apostrophes dropped (so punctuation and case never
/// count as errors), empty words left out.
pub fn normalized_words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word error rate of `hypothesis` against `reference`: the word-level Levenshtein distance
/// (substitutions, insertions and deletions) over the reference's word count, words as
/// [`normalized_words`] gives them. An empty reference gives the hypothesis's word count
/// (0 when both are empty).
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (normalized_words(reference), normalized_words(hypothesis));
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for i in 1..=r.len() {
        let mut diagonal = row[0];
        row[0] = i;
        for j in 1..=h.len() {
            let above = row[j];
            row[j] = (diagonal + usize::from(r[i - 1] != h[j - 1]))
                .min(above + 1)
                .min(row[j - 1] + 1);
            diagonal = above;
        }
    }
    row[h.len()] as f64 / r.len().max(1) as f64
}

/// Stdin copied to a temporary file (so that it can be read twice), removed on drop.
struct Spooled {
    path: std::path::PathBuf,
}

impl Spooled {
    fn stdin() -> Result<Self> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ember-stdin-{}-{}.audio",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let spooled = Self { path };
        let mut file = std::fs::File::create(&spooled.path).map_err(Error::io(&spooled.path))?;
        let copied = std::io::copy(&mut std::io::stdin().lock(), &mut file)
            .map_err(Error::io(Path::new("-")))?;
        if copied == 0 {
            return Err(Error::Audio {
                path: "-".into(),
                message: "the file is empty".into(),
            });
        }
        Ok(spooled)
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

/// A `[1, 1, vocab]` f32 tensor's values on the host.
fn host_row<B: Backend>(logits: Tensor<B, 3>) -> Result<Vec<f32>> {
    logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::Backend(format!("logits read back: {e:?}")))
}

/// The index of the largest value, the first of equal ones.
fn argmax_first(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Log-softmax in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let values: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
    let norm = log_sum_exp(&values);
    values.iter().map(|v| v - norm).collect()
}

fn softmax_at(logits: &[f32], i: usize) -> f64 {
    log_softmax(logits)[i].exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_error_rate_counts_edits_over_reference_words() {
        // Case and punctuation are not errors.
        assert_eq!(
            word_error_rate("And so, my fellow Americans.", "and so my fellow americans"),
            0.0
        );
        // One substitution in four words.
        assert_eq!(
            word_error_rate("ask not what your", "ask not what our"),
            0.25
        );
        // One deletion and one insertion in five words: 2 / 5.
        assert_eq!(word_error_rate("a b c d e", "a c d e f"), 0.4);
        // Everything missing: 1; an empty reference counts the inserted words.
        assert_eq!(word_error_rate("one two three", ""), 1.0);
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("", "two words"), 2.0);
        assert_eq!(normalized_words(" Don't  -- STOP! "), ["don't", "stop"]);
    }
}

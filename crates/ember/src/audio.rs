//! Audio in for speech models: decoding (symphonia: WAV, FLAC, MP3, Ogg Vorbis), downmixing
//! to mono, resampling to 16 kHz (rubato), and Whisper's log-mel spectrogram.
//!
//! The spectrogram follows faster-whisper's front end (`faster_whisper/feature_extractor.py`,
//! itself Whisper's `audio.py` in numpy), since faster-whisper is the reference transcripts
//! are judged against: 160 zero samples appended, a centred STFT (reflect padding, periodic
//! Hann window, n_fft 400, hop 160) whose last frame is dropped, power through 80 Slaney mel
//! filters, `log10` clamped at 1e-10 and at 8 below the whole file's maximum, then
//! `(x + 4) / 4`. The DFT and the mel filters run on the device as two matrix products (a DFT
//! of 400 points is small enough that the matmul beats a host FFT plus a transfer, and it
//! needs no FFT op that burn lacks); framing and the final clamp are on the host.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::TensorData;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSource, MediaSourceStream, ReadOnlySource};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::error::{Error, Result};

/// The sample rate Whisper's front end takes.
pub const SAMPLE_RATE: u32 = 16_000;
/// STFT size (25 ms at 16 kHz).
pub const N_FFT: usize = 400;
/// STFT hop (10 ms at 16 kHz).
pub const HOP: usize = 160;
/// Frames in one 30 s window.
pub const WINDOW_FRAMES: usize = 3000;
/// Frames whose spectrum is computed on the device in one go.
const FRAMES_PER_CHUNK: usize = 3000;

/// Decoded audio: mono samples at [`SAMPLE_RATE`], and what the file held.
#[derive(Debug, Clone)]
pub struct Audio {
    /// Mono samples in [-1, 1] at 16 kHz.
    pub samples: Vec<f32>,
    /// The file's sample rate.
    pub source_rate: u32,
    /// The file's channel count.
    pub channels: usize,
}

impl Audio {
    /// Length in seconds.
    pub fn duration(&self) -> f64 {
        self.samples.len() as f64 / f64::from(SAMPLE_RATE)
    }
}

fn audio_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Audio {
        path: path.into(),
        message: message.into(),
    }
}

/// Decodes the audio file at `path` (`-`: stdin) to mono 16 kHz, whole (for audio of any
/// length, [`AudioStream`] reads it a piece at a time).
pub fn load(path: &Path) -> Result<Audio> {
    AudioStream::open(path)?.read_all()
}

/// Decodes audio held in memory; `name` stands for its path in messages.
pub fn decode_bytes(bytes: Vec<u8>, name: &str) -> Result<Audio> {
    let path = Path::new(name);
    if bytes.is_empty() {
        return Err(audio_error(path, "the file is empty"));
    }
    AudioStream::from_source(Box::new(std::io::Cursor::new(bytes)), &Hint::new(), path)?.read_all()
}

/// An audio file decoded a packet at a time (symphonia), downmixed to mono and resampled to
/// [`SAMPLE_RATE`] as it goes ([`StreamResampler`]): what it holds does not grow with the
/// file's length. Its samples are exactly [`load`]'s, which reads one to its end.
pub struct AudioStream {
    format: Box<dyn symphonia::core::formats::FormatReader>,
    decoder: Box<dyn symphonia::core::codecs::Decoder>,
    track_id: u32,
    rate: u32,
    channels: usize,
    resampler: StreamResampler,
    path: std::path::PathBuf,
    ended: bool,
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream")
            .field("path", &self.path)
            .field("rate", &self.rate)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl AudioStream {
    /// Opens the audio file at `path` (`-`: stdin, read once).
    pub fn open(path: &Path) -> Result<Self> {
        let mut hint = Hint::new();
        let source: Box<dyn MediaSource> = if path.as_os_str() == "-" {
            Box::new(ReadOnlySource::new(std::io::stdin()))
        } else {
            if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
                hint.with_extension(ext);
            }
            let file = std::fs::File::open(path).map_err(Error::io(path))?;
            if file.metadata().map(|m| m.len()).unwrap_or(1) == 0 {
                return Err(audio_error(path, "the file is empty"));
            }
            Box::new(file)
        };
        Self::from_source(source, &hint, path)
    }

    /// Audio read from `reader` (read once, front to back); `name` stands for its path in
    /// messages.
    pub fn from_reader(
        reader: impl std::io::Read + Send + Sync + 'static,
        name: &str,
    ) -> Result<Self> {
        Self::from_source(
            Box::new(ReadOnlySource::new(reader)),
            &Hint::new(),
            Path::new(name),
        )
    }

    fn from_source(source: Box<dyn MediaSource>, hint: &Hint, path: &Path) -> Result<Self> {
        let stream = MediaSourceStream::new(source, Default::default());
        // Gapless: an MP3's encoder delay and padding (its LAME tag) are trimmed, so that
        // the audio is the length that was encoded.
        let options = FormatOptions {
            enable_gapless: true,
            ..FormatOptions::default()
        };
        let probed = symphonia::default::get_probe()
            .format(hint, stream, &options, &MetadataOptions::default())
            .map_err(|e| {
                audio_error(
                    path,
                    format!("not a supported audio file (WAV, FLAC, MP3, Ogg Vorbis): {e}"),
                )
            })?;
        let format = probed.format;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| audio_error(path, "no audio track"))?;
        let track_id = track.id;
        let rate = track
            .codec_params
            .sample_rate
            .ok_or_else(|| audio_error(path, "the audio track has no sample rate"))?;
        if rate == 0 {
            return Err(audio_error(path, "the sample rate is 0"));
        }
        let decoder = symphonia::default::get_codecs()
            .make(&track.codec_params, &DecoderOptions::default())
            .map_err(|e| audio_error(path, format!("unsupported codec: {e}")))?;
        let channels = track.codec_params.channels.map_or(0, |c| c.count());
        let resampler = StreamResampler::new(rate).map_err(|m| audio_error(path, m))?;
        Ok(Self {
            format,
            decoder,
            track_id,
            rate,
            channels,
            resampler,
            path: path.to_path_buf(),
            ended: false,
        })
    }

    /// The file's sample rate.
    pub fn source_rate(&self) -> u32 {
        self.rate
    }

    /// The file's channel count (as its last packet had it).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The next 16 kHz mono samples (possibly none while the resampler fills), `None` at
    /// the end of the file.
    pub fn next_samples(&mut self) -> Result<Option<Vec<f32>>> {
        if self.ended {
            return Ok(None);
        }
        let path = self.path.as_path();
        let packet = match self.format.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.ended = true;
                return self
                    .resampler
                    .finish()
                    .map(Some)
                    .map_err(|m| audio_error(path, m));
            }
            Err(e) => return Err(audio_error(path, format!("cannot read the stream: {e}"))),
        };
        if packet.track_id() != self.track_id {
            return Ok(Some(Vec::new()));
        }
        let decoded = match self.decoder.decode(&packet) {
            Ok(decoded) => decoded,
            // A corrupt packet: skipped, as players do; the rest of the file still counts.
            Err(SymphoniaError::DecodeError(e)) => {
                tracing::warn!("{}: skipped a corrupt packet ({e})", path.display());
                return Ok(Some(Vec::new()));
            }
            Err(e) => return Err(audio_error(path, format!("cannot decode: {e}"))),
        };
        let spec = *decoded.spec();
        self.channels = spec.channels.count();
        if spec.rate != self.rate {
            return Err(audio_error(
                path,
                format!(
                    "the sample rate changes from {} to {} Hz",
                    self.rate, spec.rate
                ),
            ));
        }
        let mut buffer = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buffer.copy_interleaved_ref(decoded);
        let mono: Vec<f32> = buffer
            .samples()
            .chunks_exact(self.channels.max(1))
            .map(|frame| frame.iter().sum::<f32>() / frame.len() as f32)
            .collect();
        self.resampler
            .push(&mono)
            .map(Some)
            .map_err(|m| audio_error(path, m))
    }

    /// Every remaining sample, as [`Audio`].
    pub fn read_all(mut self) -> Result<Audio> {
        let mut samples = Vec::new();
        while let Some(more) = self.next_samples()? {
            samples.extend(more);
        }
        Ok(Audio {
            samples,
            source_rate: self.rate,
            channels: self.channels,
        })
    }
}

/// Samples at `rate` resampled to [`SAMPLE_RATE`] as they come, by rubato's windowed-sinc
/// resampler in blocks of [`RESAMPLE_CHUNK`] input samples, the output `ceil(len * 16000 /
/// rate)` long, where `len` is the whole input's length. The blocks are the same whether the
/// input comes at once or in pieces, so the output is too.
///
/// Nothing is trimmed from the start: rubato 0.16's `SincFixedIn` centres its first output
/// on the first input samples (its `last_index` starts half a sinc window back), so its
/// output is aligned with its input to within one output sample, although its
/// `output_delay()` reports half a window (47 samples from 44.1 kHz); trimming those, as
/// this did before, moved the audio 2.9 ms early (`resampling_in_pieces_equals_resampling_at_once`
/// checks the alignment).
struct StreamResampler {
    /// `None` at 16 kHz: samples pass through.
    resampler: Option<rubato::SincFixedIn<f32>>,
    rate: u32,
    /// Input not yet resampled (less than a block).
    pending: Vec<f32>,
    /// Input samples seen.
    consumed: u64,
    /// Output samples handed out.
    emitted: u64,
}

/// Input samples per resampler block.
const RESAMPLE_CHUNK: usize = 4096;

impl StreamResampler {
    fn new(rate: u32) -> std::result::Result<Self, String> {
        use rubato::{
            SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
        };
        let resampler = if rate == SAMPLE_RATE {
            None
        } else {
            let parameters = SincInterpolationParameters {
                sinc_len: 256,
                f_cutoff: 0.95,
                interpolation: SincInterpolationType::Cubic,
                oversampling_factor: 256,
                window: WindowFunction::BlackmanHarris2,
            };
            let ratio = f64::from(SAMPLE_RATE) / f64::from(rate);
            Some(
                SincFixedIn::<f32>::new(ratio, 1.0, parameters, RESAMPLE_CHUNK, 1)
                    .map_err(|e| format!("cannot resample from {rate} Hz: {e}"))?,
            )
        };
        Ok(Self {
            resampler,
            rate,
            pending: Vec::new(),
            consumed: 0,
            emitted: 0,
        })
    }

    fn push(&mut self, samples: &[f32]) -> std::result::Result<Vec<f32>, String> {
        use rubato::Resampler;
        self.consumed += samples.len() as u64;
        let Some(resampler) = self.resampler.as_mut() else {
            self.emitted += samples.len() as u64;
            return Ok(samples.to_vec());
        };
        self.pending.extend_from_slice(samples);
        let mut out = Vec::new();
        let blocks = self.pending.len() / RESAMPLE_CHUNK;
        for block in self.pending.chunks_exact(RESAMPLE_CHUNK) {
            let produced = resampler
                .process(&[block], None)
                .map_err(|e| resample_error(self.rate, e))?;
            out.extend(&produced[0]);
        }
        self.pending.drain(..blocks * RESAMPLE_CHUNK);
        self.emitted += out.len() as u64;
        Ok(out)
    }

    fn finish(&mut self) -> std::result::Result<Vec<f32>, String> {
        use rubato::Resampler;
        let Some(resampler) = self.resampler.as_mut() else {
            return Ok(Vec::new());
        };
        if self.consumed == 0 {
            return Ok(Vec::new());
        }
        let ratio = f64::from(SAMPLE_RATE) / f64::from(self.rate);
        let wanted = (self.consumed as f64 * ratio).ceil() as u64;
        let left = wanted.saturating_sub(self.emitted) as usize;
        let rate = self.rate;
        let mut out = resampler
            .process_partial(Some(&[self.pending.as_slice()]), None)
            .map_err(|e| resample_error(rate, e))?
            .swap_remove(0);
        // The resampler's last outputs need input past the end: zeros flush them.
        while out.len() < left {
            let flushed = resampler
                .process_partial::<&[f32]>(None, None)
                .map_err(|e| resample_error(rate, e))?;
            if flushed[0].is_empty() {
                break;
            }
            out.extend(&flushed[0]);
        }
        out.truncate(left);
        self.pending.clear();
        self.emitted += out.len() as u64;
        Ok(out)
    }
}

fn resample_error(rate: u32, e: rubato::ResampleError) -> String {
    format!("cannot resample from {rate} Hz: {e}")
}

/// Whisper's 80 (or `n_mels`) Slaney mel filters for a 400-point FFT at 16 kHz, `[201,
/// n_mels]` row-major: librosa's `mel(sr=16000, n_fft=400, n_mels, htk=False,
/// norm="slaney")` as faster-whisper computes it.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let bins = N_FFT / 2 + 1;
    let hz = |mel: f64| -> f64 {
        // Linear below 1 kHz (200/3 Hz per mel), logarithmic above.
        let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
        let min_log_mel = min_log_hz / f_sp;
        if mel >= min_log_mel {
            min_log_hz * ((6.4f64).ln() / 27.0 * (mel - min_log_mel)).exp()
        } else {
            f_sp * mel
        }
    };
    // hz_to_mel(8000) in the Slaney scale.
    let max_mel = 45.245640471924965;
    let freqs: Vec<f64> = (0..n_mels + 2)
        .map(|i| hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut filters = vec![0f32; bins * n_mels];
    for m in 0..n_mels {
        let (lo, mid, hi) = (freqs[m], freqs[m + 1], freqs[m + 2]);
        let enorm = 2.0 / (hi - lo);
        for (k, row) in filters.chunks_exact_mut(n_mels).enumerate() {
            let f = k as f64 * f64::from(SAMPLE_RATE) / N_FFT as f64;
            let lower = (f - lo) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            row[m] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    filters
}

/// Index `i` of a signal of `len` samples extended by reflection (numpy's `reflect`).
fn reflect(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let i = i.rem_euclid(period);
    (if i < len as isize { i } else { period - i }) as usize
}

/// Whisper's log-mel front end on a device ([module docs](self)).
#[derive(Debug, Clone)]
pub struct LogMel<B: Backend> {
    /// `[n_fft, bins]` cosines and sines of the DFT, the Hann window folded in.
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    /// `[bins, n_mels]`.
    filters: Tensor<B, 2>,
    n_mels: usize,
}

/// A log-mel spectrogram: `frames` rows of `n_mels` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrogram {
    /// `[frames, n_mels]`, row-major.
    pub values: Vec<f32>,
    /// Mel bins per frame.
    pub n_mels: usize,
}

impl Spectrogram {
    /// Frames (10 ms each).
    pub fn frames(&self) -> usize {
        self.values.len() / self.n_mels.max(1)
    }

    /// Frame `f`'s mel bins.
    pub fn frame(&self, f: usize) -> &[f32] {
        &self.values[f * self.n_mels..(f + 1) * self.n_mels]
    }

    /// The 30 s window from frame `start`: `[1, n_mels, 3000]` in `dtype`, frames past
    /// `start + len` zero (faster-whisper's `pad_or_trim` of the features).
    pub fn window<B: Backend>(
        &self,
        start: usize,
        len: usize,
        device: &B::Device,
        dtype: burn::tensor::DType,
    ) -> Tensor<B, 3> {
        let len = len.min(WINDOW_FRAMES);
        let mut values = vec![0f32; WINDOW_FRAMES * self.n_mels];
        values[..len * self.n_mels]
            .copy_from_slice(&self.values[start * self.n_mels..(start + len) * self.n_mels]);
        Tensor::<B, 2>::from_data(
            TensorData::new(values, [WINDOW_FRAMES, self.n_mels]),
            (device, burn::tensor::DType::F32),
        )
        .swap_dims(0, 1)
        .unsqueeze::<3>()
        .cast(dtype)
    }
}

impl<B: Backend> LogMel<B> {
    /// The DFT and filter matrices for `n_mels` bins, on `device`, in f32.
    pub fn new(n_mels: usize, device: &B::Device) -> Self {
        let bins = N_FFT / 2 + 1;
        let mut cos = vec![0f32; N_FFT * bins];
        let mut sin = vec![0f32; N_FFT * bins];
        for n in 0..N_FFT {
            // Periodic Hann window (numpy: hanning(n_fft + 1)[:-1]).
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos();
            for k in 0..bins {
                // n * k mod N keeps the angle small, so the f64 cos/sin are exact to f32.
                let angle = 2.0 * std::f64::consts::PI * ((n * k) % N_FFT) as f64 / N_FFT as f64;
                cos[n * bins + k] = (w * angle.cos()) as f32;
                sin[n * bins + k] = (w * angle.sin()) as f32;
            }
        }
        let f32 = (device, burn::tensor::DType::F32);
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [N_FFT, bins]), f32),
            sin: Tensor::from_data(TensorData::new(sin, [N_FFT, bins]), f32),
            filters: Tensor::from_data(TensorData::new(mel_filters(n_mels), [bins, n_mels]), f32),
            n_mels,
        }
    }

    /// The log-mel spectrogram of 16 kHz `samples`: `len / 160 + 1` frames, of which the
    /// last is padding (faster-whisper's "content frames" are all but it). Empty audio gives
    /// no frames.
    pub fn compute(&self, samples: &[f32]) -> Result<Spectrogram> {
        let mut raw = RawMel::new(self);
        let mut log = raw.push(samples)?;
        log.extend(raw.finish()?);
        let max = log.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in &mut log {
            *v = normalize(*v, max);
        }
        Ok(Spectrogram {
            values: log,
            n_mels: self.n_mels,
        })
    }

    /// `log10` of the mel power of `n` frames from frame `first` of the padded signal
    /// `buffer` (which starts at sample `base`; `len`: the signal's length as reflection
    /// sees it), `[n, n_mels]` row-major.
    fn frames_log10(
        &self,
        buffer: &[f32],
        base: usize,
        len: usize,
        first: usize,
        n: usize,
    ) -> Result<Vec<f32>> {
        let mut chunk = vec![0f32; n * N_FFT];
        for (f, row) in chunk.chunks_exact_mut(N_FFT).enumerate() {
            let start = ((first + f) * HOP) as isize - (N_FFT / 2) as isize;
            for (j, slot) in row.iter_mut().enumerate() {
                *slot = buffer[reflect(start + j as isize, len) - base];
            }
        }
        let device = self.cos.device();
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(chunk, [n, N_FFT]),
            (&device, burn::tensor::DType::F32),
        );
        let re = x.clone().matmul(self.cos.clone());
        let im = x.matmul(self.sin.clone());
        let power = re.square().add(im.square());
        let mel = power
            .matmul(self.filters.clone())
            .clamp_min(1e-10)
            .log()
            .div_scalar(std::f64::consts::LN_10);
        mel.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::Backend(format!("log-mel read back: {e:?}")))
    }
}

/// The last step of the front end: clamped at 8 below the whole file's maximum `max`, then
/// `(x + 4) / 4`.
fn normalize(log10: f32, max: f32) -> f32 {
    (log10.max(max - 8.0) + 4.0) / 4.0
}

/// The `log10` mel frames of a stream of 16 kHz samples, before [`normalize`] (which needs
/// the whole file's maximum): computed [`FRAMES_PER_CHUNK`] frames at a time, on the device,
/// as soon as their samples have come; it holds only the samples of frames not yet
/// computed. The chunks are the same whether the samples come at once or in pieces, so the
/// frames are too.
pub struct RawMel<'a, B: Backend> {
    front_end: &'a LogMel<B>,
    /// The padded signal from sample `base` on.
    buffer: Vec<f32>,
    base: usize,
    /// Samples pushed.
    seen: usize,
    /// The next frame to compute.
    next: usize,
    /// The most samples `buffer` held.
    high_water: usize,
}

impl<'a, B: Backend> RawMel<'a, B> {
    /// No samples yet.
    pub fn new(front_end: &'a LogMel<B>) -> Self {
        Self {
            front_end,
            buffer: Vec::new(),
            base: 0,
            seen: 0,
            next: 0,
            high_water: 0,
        }
    }

    /// Mel bins per frame.
    pub fn n_mels(&self) -> usize {
        self.front_end.n_mels
    }

    /// The most samples held at once so far (what the stream's memory grows with).
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Adds `samples`; returns the frames now complete, `[frames, n_mels]` row-major.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>> {
        self.buffer.extend_from_slice(samples);
        self.seen += samples.len();
        self.high_water = self.high_water.max(self.buffer.len());
        let mut out = Vec::new();
        // A chunk is complete when its last frame's last sample has come: no reflection at
        // the end of the signal reaches it.
        while (self.next + FRAMES_PER_CHUNK - 1) * HOP + N_FFT / 2 < self.seen {
            out.extend(self.front_end.frames_log10(
                &self.buffer,
                self.base,
                self.seen,
                self.next,
                FRAMES_PER_CHUNK,
            )?);
            self.next += FRAMES_PER_CHUNK;
            // The next frame's first sample (reflection at the start needs samples up to
            // N_FFT / 2, there only while the first chunk is computed).
            let keep_from = (self.next * HOP).saturating_sub(N_FFT / 2);
            self.buffer.drain(..keep_from - self.base);
            self.base = keep_from;
        }
        Ok(out)
    }

    /// The end of the samples: the remaining frames (`len / 160 + 1` in all; none for no
    /// samples).
    pub fn finish(&mut self) -> Result<Vec<f32>> {
        if self.seen == 0 {
            return Ok(Vec::new());
        }
        // faster-whisper appends a hop of zeros; the centred STFT has 1 + len / hop frames
        // of that, and it drops the last.
        self.buffer.extend(std::iter::repeat_n(0.0, HOP));
        let len = self.seen + HOP;
        self.seen = len;
        let frames = len / HOP;
        let mut out = Vec::new();
        while self.next < frames {
            let n = FRAMES_PER_CHUNK.min(frames - self.next);
            out.extend(
                self.front_end
                    .frames_log10(&self.buffer, self.base, len, self.next, n)?,
            );
            self.next += n;
        }
        self.buffer = Vec::new();
        Ok(out)
    }
}

/// The normalised log-mel spectrogram of a file too long to hold, window by window: a first
/// pass over the file finds its frame count and maximum (which [`normalize`] needs), a
/// second computes the frames again as windows ask for them, holding the frames from the
/// window asked last onward (two windows at most) and the samples of one chunk. Its frames
/// equal [`LogMel::compute`]'s of the whole file.
pub struct MelWindows<'a, B: Backend> {
    raw: RawMel<'a, B>,
    stream: Option<AudioStream>,
    frames: usize,
    samples: u64,
    max: f32,
    /// Normalised frames, the last `held.len() / n_mels` of the `produced` so far.
    held: std::collections::VecDeque<f32>,
    produced: usize,
    /// The most frames held at once.
    high_water: usize,
}

impl<'a, B: Backend> MelWindows<'a, B> {
    /// Scans the audio `open` opens (the first pass) and opens it again for the windows.
    pub fn new(
        front_end: &'a LogMel<B>,
        mut open: impl FnMut() -> Result<AudioStream>,
    ) -> Result<Self> {
        let mut stream = open()?;
        let mut raw = RawMel::new(front_end);
        let (mut frames, mut samples, mut max) = (0usize, 0u64, f32::NEG_INFINITY);
        let mut count = |values: Vec<f32>| {
            frames += values.len() / front_end.n_mels;
            max = values.iter().copied().fold(max, f32::max);
        };
        while let Some(more) = stream.next_samples()? {
            samples += more.len() as u64;
            count(raw.push(&more)?);
        }
        count(raw.finish()?);
        let high_water = raw.high_water();
        let mut raw = RawMel::new(front_end);
        raw.high_water = high_water;
        let stream = Some(open()?);
        Ok(Self {
            raw,
            stream,
            frames,
            samples,
            max,
            held: Default::default(),
            produced: 0,
            high_water: 0,
        })
    }

    /// Frames of the whole file (`len / 160 + 1`, the last padding; 0 for no samples).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Seconds of audio.
    pub fn duration(&self) -> f64 {
        self.samples as f64 / f64::from(SAMPLE_RATE)
    }

    /// The most samples (of the audio) and frames (of the spectrogram) held at once so far:
    /// what the memory of a long file grows with.
    pub fn high_water(&self) -> (usize, usize) {
        (self.raw.high_water(), self.high_water)
    }

    /// The 30 s window from frame `start` (`len` frames, the rest zero), as
    /// [`Spectrogram::window`] gives it; windows must be asked for in order of `start`.
    pub fn window(
        &mut self,
        start: usize,
        len: usize,
        dtype: burn::tensor::DType,
    ) -> Result<Tensor<B, 3>> {
        let n_mels = self.raw.n_mels();
        let len = len.min(WINDOW_FRAMES);
        let first = self.produced - self.held.len() / n_mels;
        if start < first {
            return Err(Error::Backend(format!(
                "log-mel window at frame {start} asked after frame {first}"
            )));
        }
        let drop = (start - first).min(self.held.len() / n_mels);
        self.held.drain(..drop * n_mels);
        while self.produced < start + len {
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            let frames = match stream.next_samples()? {
                Some(samples) => self.raw.push(&samples)?,
                None => {
                    self.stream = None;
                    self.raw.finish()?
                }
            };
            // Frames `produced..` came; those before `start` (a window skipped) are not kept.
            let n = frames.len() / n_mels;
            let skip = start.saturating_sub(self.produced).min(n);
            let max = self.max;
            self.held
                .extend(frames[skip * n_mels..].iter().map(|&v| normalize(v, max)));
            self.produced += n;
            self.high_water = self.high_water.max(self.held.len() / n_mels);
        }
        if self.produced < start + len {
            return Err(Error::Backend(format!(
                "the audio changed while it was read: frame {} of {} is missing",
                self.produced, self.frames
            )));
        }
        let first = self.produced - self.held.len() / n_mels;
        let mut values = vec![0f32; WINDOW_FRAMES * n_mels];
        let from = (start - first) * n_mels;
        for (slot, &v) in values[..len * n_mels]
            .iter_mut()
            .zip(self.held.range(from..from + len * n_mels))
        {
            *slot = v;
        }
        let device = self.raw.front_end.cos.device();
        Ok(Tensor::<B, 2>::from_data(
            TensorData::new(values, [WINDOW_FRAMES, n_mels]),
            (&device, burn::tensor::DType::F32),
        )
        .swap_dims(0, 1)
        .unsqueeze::<3>()
        .cast(dtype))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reflection_matches_numpy() {
        // np.pad([0, 1, 2, 3], 5, mode="reflect")
        let got: Vec<usize> = (-5..9).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
    }

    fn resample_in_pieces(input: &[f32], rate: u32, piece: usize) -> Vec<f32> {
        let mut resampler = StreamResampler::new(rate).unwrap();
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            out.extend(resampler.push(part).unwrap());
        }
        out.extend(resampler.finish().unwrap());
        out
    }

    #[test]
    fn resampling_in_pieces_equals_resampling_at_once() {
        for rate in [44_100, 22_050, 8_000] {
            let n = rate as usize * 2 + 1234;
            let input: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.031).sin() * 0.5 + (i as f32 * 0.0071).cos() * 0.25)
                .collect();
            let whole = resample_in_pieces(&input, rate, n);
            let wanted = (n as f64 * f64::from(SAMPLE_RATE) / f64::from(rate)).ceil() as usize;
            assert_eq!(whole.len(), wanted, "{rate} Hz");
            // Aligned: away from the ends, output sample k is the signal at time k / 16000 s
            // within one output sample (the largest step between two output samples is
            // below 0.05; trimming rubato's reported delay was off by 0.8).
            let ratio = f64::from(rate) / f64::from(SAMPLE_RATE);
            for k in (wanted / 4..3 * wanted / 4).step_by(97) {
                let t = k as f64 * ratio;
                let want = (t * 0.031).sin() * 0.5 + (t * 0.0071).cos() * 0.25;
                let err = (f64::from(whole[k]) - want).abs();
                assert!(err < 0.05, "{rate} Hz: output {k} is {err} off");
            }
            for piece in [1, 777, RESAMPLE_CHUNK, RESAMPLE_CHUNK + 1] {
                assert!(
                    resample_in_pieces(&input, rate, piece) == whole,
                    "{rate} Hz in pieces of {piece}"
                );
            }
        }
        assert!(resample_in_pieces(&[], 44_100, 10).is_empty());
        let same: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert_eq!(resample_in_pieces(&same, SAMPLE_RATE, 7), same);
    }

    #[test]
    fn filters_are_slaney_normalised_triangles() {
        let f = mel_filters(80);
        // Every filter is non-negative and has some weight; their areas follow Slaney's
        // normalisation (weights sum to about 2 / bandwidth * bins per band).
        for m in 0..80 {
            let column: Vec<f32> = (0..201).map(|k| f[k * 80 + m]).collect();
            assert!(column.iter().all(|&w| w >= 0.0));
            assert!(column.iter().any(|&w| w > 0.0), "filter {m} is empty");
        }
    }
}

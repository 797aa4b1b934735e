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

/// Decodes the audio file at `path` (`-`: stdin) to mono 16 kHz.
pub fn load(path: &Path) -> Result<Audio> {
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
    decode(source, &hint, path)
}

/// Decodes audio held in memory; `name` stands for its path in messages.
pub fn decode_bytes(bytes: Vec<u8>, name: &str) -> Result<Audio> {
    let path = Path::new(name);
    if bytes.is_empty() {
        return Err(audio_error(path, "the file is empty"));
    }
    decode(Box::new(std::io::Cursor::new(bytes)), &Hint::new(), path)
}

fn decode(source: Box<dyn MediaSource>, hint: &Hint, path: &Path) -> Result<Audio> {
    let stream = MediaSourceStream::new(source, Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| {
            audio_error(
                path,
                format!("not a supported audio file (WAV, FLAC, MP3, Ogg Vorbis): {e}"),
            )
        })?;
    let mut format = probed.format;
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
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| audio_error(path, format!("unsupported codec: {e}")))?;
    let mut mono = Vec::new();
    let mut channels = track.codec_params.channels.map_or(0, |c| c.count());
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            Err(e) => return Err(audio_error(path, format!("cannot read the stream: {e}"))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            // A corrupt packet: skipped, as players do; the rest of the file still counts.
            Err(SymphoniaError::DecodeError(e)) => {
                tracing::warn!("{}: skipped a corrupt packet ({e})", path.display());
                continue;
            }
            Err(e) => return Err(audio_error(path, format!("cannot decode: {e}"))),
        };
        let spec = *decoded.spec();
        channels = spec.channels.count();
        if spec.rate != rate {
            return Err(audio_error(
                path,
                format!("the sample rate changes from {rate} to {} Hz", spec.rate),
            ));
        }
        let mut buffer = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buffer.copy_interleaved_ref(decoded);
        mono.extend(
            buffer
                .samples()
                .chunks_exact(channels.max(1))
                .map(|frame| frame.iter().sum::<f32>() / frame.len() as f32),
        );
    }
    let samples = resample(&mono, rate).map_err(|m| audio_error(path, m))?;
    Ok(Audio {
        samples,
        source_rate: rate,
        channels,
    })
}

/// `samples` at `rate` resampled to [`SAMPLE_RATE`] by rubato's windowed-sinc resampler, its
/// delay removed and its length `ceil(len * 16000 / rate)`.
fn resample(samples: &[f32], rate: u32) -> std::result::Result<Vec<f32>, String> {
    use rubato::{
        Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
    };
    if rate == SAMPLE_RATE || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let ratio = f64::from(SAMPLE_RATE) / f64::from(rate);
    let parameters = SincInterpolationParameters {
        sinc_len: 256,
        f_cutoff: 0.95,
        interpolation: SincInterpolationType::Cubic,
        oversampling_factor: 256,
        window: WindowFunction::BlackmanHarris2,
    };
    let chunk = 4096;
    let mut resampler = SincFixedIn::<f32>::new(ratio, 1.0, parameters, chunk, 1)
        .map_err(|e| format!("cannot resample from {rate} Hz: {e}"))?;
    let wanted = (samples.len() as f64 * ratio).ceil() as usize;
    let delay = resampler.output_delay();
    let mut out = Vec::with_capacity(wanted + delay + chunk);
    let fail = |e: rubato::ResampleError| format!("cannot resample from {rate} Hz: {e}");
    let mut chunks = samples.chunks_exact(chunk);
    for part in chunks.by_ref() {
        out.extend(&resampler.process(&[part], None).map_err(fail)?[0]);
    }
    let rest = chunks.remainder();
    out.extend(
        &resampler
            .process_partial(Some(&[rest]), None)
            .map_err(fail)?[0],
    );
    while out.len() < wanted + delay {
        let flushed = resampler
            .process_partial::<&[f32]>(None, None)
            .map_err(fail)?;
        if flushed[0].is_empty() {
            break;
        }
        out.extend(&flushed[0]);
    }
    out.drain(..delay.min(out.len()));
    out.truncate(wanted);
    Ok(out)
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
        if samples.is_empty() {
            return Ok(Spectrogram {
                values: Vec::new(),
                n_mels: self.n_mels,
            });
        }
        let mut padded = samples.to_vec();
        padded.extend(std::iter::repeat_n(0.0, HOP));
        let len = padded.len();
        // The centred STFT has 1 + len / hop frames; faster-whisper drops the last.
        let frames = len / HOP;
        let device = self.cos.device();
        let mut log = Vec::with_capacity(frames * self.n_mels);
        for start in (0..frames).step_by(FRAMES_PER_CHUNK) {
            let n = FRAMES_PER_CHUNK.min(frames - start);
            let mut chunk = vec![0f32; n * N_FFT];
            for (f, row) in chunk.chunks_exact_mut(N_FFT).enumerate() {
                let first = ((start + f) * HOP) as isize - (N_FFT / 2) as isize;
                for (j, slot) in row.iter_mut().enumerate() {
                    *slot = padded[reflect(first + j as isize, len)];
                }
            }
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
            let data = mel.into_data().convert::<f32>();
            let values = data
                .into_vec::<f32>()
                .map_err(|e| Error::Backend(format!("log-mel read back: {e:?}")))?;
            log.extend(values);
        }
        let max = log.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in &mut log {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        Ok(Spectrogram {
            values: log,
            n_mels: self.n_mels,
        })
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

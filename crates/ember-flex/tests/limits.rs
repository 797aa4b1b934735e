//! Limits: a model too large for the machine's memory is refused before work starts; audio
//! too long to hold is streamed in bounded memory.

use ember::source::Checkpoint;
use ember::{DType, Embedder, Engine, EngineConfig};
use ember_tests::{fixtures, minilm_config, spec};

type B = ember_flex::Backend;

fn load(source: &str) -> ember::Result<Engine<B>> {
    let (device, runtime) = ember_flex::init(&spec("flex", "cpu", DType::F32)).unwrap();
    let mut config = EngineConfig::default();
    config.model.source = source.into();
    let capabilities = ember_flex::capabilities(&device);
    Engine::load(&config, &device, runtime, &capabilities)
}

/// `123.45 GiB (132555..., bytes)` -> the byte count.
fn bytes_after(message: &str, marker: &str) -> u128 {
    let rest =
        &message[message.find(marker).unwrap_or_else(|| panic!("{message}")) + marker.len()..];
    let open = rest.find('(').unwrap() + 1;
    let close = rest[open..].find(" bytes)").unwrap() + open;
    rest[open..close].parse().unwrap()
}

#[test]
fn a_model_larger_than_memory_fails_before_allocating_with_both_numbers() {
    // About 9 * 10^12 weights: no machine has that, and allocating would abort the process.
    let err = load("preset:smollm2-1.7b,hidden=65536,intermediate=262144,layers=1024")
        .expect_err("the load must fail");
    let message = err.to_string();
    assert!(matches!(err, ember::Error::OutOfMemory { .. }), "{message}");
    let needed = bytes_after(&message, "needs ");
    let available = bytes_after(&message, "but only ");
    assert!(needed > available, "{message}");
    assert!(message.contains("parameters in f32"), "{message}");
}

#[test]
fn the_memory_estimate_counts_the_weights_the_model_loads() {
    for variant in ["gqa-untied", "mha-tied"] {
        let dir = fixtures().join("tiny").join(variant).join("hf");
        let engine = load(&dir.display().to_string()).unwrap();
        assert_eq!(
            engine.model().declared_params(),
            engine.model().num_params() as u128,
            "{variant}"
        );
    }
}

/// Copies `from` into `to` (and its folders, such as `1_Pooling/`) but the safetensors files.
fn copy_without_weights(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_without_weights(&path, &target);
        } else if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            std::fs::copy(&path, target).unwrap();
        }
    }
}

fn load_encoder(config: &EngineConfig) -> ember::Result<Embedder<B>> {
    let (device, runtime) = ember_flex::init(&spec("flex", "cpu", DType::F32)).unwrap();
    Embedder::load(config, &device, runtime)
}

#[test]
fn an_encoder_larger_than_memory_fails_before_reading_its_weights() {
    let Checkpoint::HfDir(real) = ember::source::resolve(&minilm_config().model).unwrap() else {
        panic!("all-MiniLM-L6-v2 is a Hugging Face directory");
    };
    // all-MiniLM-L6-v2's files without its weights, its config.json declaring about
    // 6 * 10^13 weights: the check must fail before the (absent) safetensors file is opened.
    let dir = std::env::temp_dir().join(format!("ember-huge-bert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    copy_without_weights(&real, &dir);
    let text = std::fs::read_to_string(real.join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["hidden_size"] = 61440.into(); // 12 heads of 5120
    json["intermediate_size"] = 262144.into();
    json["num_hidden_layers"] = 2048.into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let mut config = EngineConfig::default();
    config.model.source = dir.display().to_string();
    let Err(err) = load_encoder(&config) else {
        panic!("the load must fail")
    };
    let message = err.to_string();
    assert!(matches!(err, ember::Error::OutOfMemory { .. }), "{message}");
    assert!(bytes_after(&message, "needs ") > bytes_after(&message, "but only "));
    assert!(message.contains("parameters in f32"), "{message}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_encoder_memory_estimate_counts_the_weights_it_loads() {
    let embedder = load_encoder(&minilm_config()).unwrap();
    let model = embedder.model();
    assert_eq!(
        model.config().param_count() * 4,
        model.weights_bytes() as u128
    );
}

/// A WAV file of `seconds` of 16 kHz mono 16-bit silence, made as it is read (no disk, no
/// memory): the header, then zeros.
struct SilentWav {
    header: Vec<u8>,
    left: u64,
    at: usize,
}

impl SilentWav {
    fn new(seconds: u64) -> Self {
        let data = seconds * 16_000 * 2;
        let data32 = u32::try_from(data).expect("fits a WAV");
        let mut header = Vec::new();
        header.extend(b"RIFF");
        header.extend((36 + data32).to_le_bytes());
        header.extend(b"WAVEfmt ");
        header.extend(16u32.to_le_bytes());
        header.extend(1u16.to_le_bytes());
        header.extend(1u16.to_le_bytes());
        header.extend(16_000u32.to_le_bytes());
        header.extend(32_000u32.to_le_bytes());
        header.extend(2u16.to_le_bytes());
        header.extend(16u16.to_le_bytes());
        header.extend(b"data");
        header.extend(data32.to_le_bytes());
        Self {
            header,
            left: data,
            at: 0,
        }
    }
}

impl std::io::Read for SilentWav {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at < self.header.len() {
            let n = buf.len().min(self.header.len() - self.at);
            buf[..n].copy_from_slice(&self.header[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        buf[..n].fill(0);
        self.left -= n as u64;
        Ok(n)
    }
}

/// What the streamed front end holds at most on `seconds` of silence: samples and frames,
/// after both passes and a window at the start, in the middle and at the end.
fn streamed_high_water(seconds: u64) -> (usize, usize) {
    use ember::audio::{AudioStream, LogMel, MelWindows};
    let device = Default::default();
    let front_end = LogMel::<B>::new(80, &device);
    let mut mel = MelWindows::new(&front_end, || {
        AudioStream::from_reader(SilentWav::new(seconds), "silence.wav")
    })
    .unwrap();
    assert_eq!(mel.frames(), (seconds * 100 + 1) as usize);
    assert_eq!(mel.duration(), seconds as f64);
    let last = mel.frames() - 1;
    for start in [0, last / 2, last.saturating_sub(1000)] {
        let window = mel.window(start, 3000.min(last - start), burn::tensor::DType::F32);
        let window = window.unwrap();
        assert_eq!(window.dims(), [1, 80, 3000]);
        // Silence: every frame is the floor, log10(1e-10) = -10, normalised to -1.5.
        let values: Vec<f32> = window.into_data().iter::<f32>().take(80).collect();
        assert!(values.iter().all(|&v| (v + 1.5).abs() < 1e-5), "{values:?}");
    }
    mel.high_water()
}

/// Audio of any length is streamed: what the front end holds (samples and log-mel frames)
/// is the same for 2 hours of audio as for 10 minutes, a few windows' worth; before, the
/// whole audio (230 MB an hour) and its spectrogram (115 MB an hour) were held. This counts
/// what the stream holds rather than the process's peak memory, which the other tests of
/// this binary running at the same time would blur. It runs the front end only (both passes
/// over 2 hours: ~20 s in a test build; 10 hours, run once, held the same and took a CI
/// minute and a half); transcribing hours through the encoder would take
/// hours here, so ember-cli's tests/transcribe.rs transcribes three minutes of silence end
/// to end instead.
#[test]
fn hours_of_audio_stream_in_bounded_memory() {
    let short = streamed_high_water(600);
    let long = streamed_high_water(2 * 3600);
    eprintln!("held at most (samples, frames): 10 min {short:?}, 2 h {long:?}");
    // One chunk of 3000 frames' samples (and a packet), two windows of frames, whatever
    // the length.
    for (samples, frames) in [short, long] {
        assert!(samples <= 3000 * 160 + 16_000, "{samples} samples");
        assert!(frames <= 2 * 3000, "{frames} frames");
    }
    assert!(
        long.0 <= short.0 + 16_000 && long.1 <= short.1,
        "grows with the length"
    );
}

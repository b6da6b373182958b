//! The confidential-inference demo (`docs/confidential-inference.md`): a tiny real
//! model, its encrypted weights file, and the request protocol a tenant speaks to the
//! service over attested TLS.
//!
//! - The tenant (`demo-tenant`, on its own machine) trains a logistic regression on
//!   deterministic synthetic data ([`train`]), makes a 32-byte key ([`WeightsKey`]) and
//!   seals the weights ([`seal`]): ChaCha20-Poly1305 with the file's header as
//!   associated data. Only the sealed file goes into the image, so the node only ever
//!   holds ciphertext.
//! - The service (`demo-inference`, bulwark-init's workload inside the VM) holds that
//!   ciphertext. A customer that has affirmed the VM's evidence over attested TLS sends
//!   one JSON request carrying the key and the inputs ([`parse_request`]); the service
//!   opens the weights with that key ([`open`]), answers one JSON line
//!   ([`handle_request`]) and drops (zeroizes) the key and the plaintext weights.
//!
//! Nothing here panics on hostile input: every malformed file or request is an error.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde_json::{json, Value};
use zeroize::{Zeroize, Zeroizing};

/// The demo model's input width.
pub const DIM: usize = 6;

/// The widest model a weights file may describe.
pub const MAX_DIM: usize = 1024;

/// The file's magic.
pub const MAGIC: [u8; 8] = *b"BWWEIGHT";

/// The only format version.
pub const VERSION: u16 = 1;

/// Model kind 1: logistic regression (`DIM` weights, then the bias).
pub const KIND_LOGISTIC_REGRESSION: u8 = 1;

/// Element type 1: IEEE 754 binary64, little-endian.
pub const DTYPE_F64_LE: u8 = 1;

/// The header: magic, version, kind, dtype, input width. It is the AEAD's associated data.
pub const HEADER_LEN: usize = 16;

/// ChaCha20-Poly1305's nonce (96 bits).
pub const NONCE_LEN: usize = 12;

/// Poly1305's tag.
pub const TAG_LEN: usize = 16;

/// The largest request the service reads.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The most inputs one request may carry.
pub const MAX_INPUTS: usize = 1024;

/// The largest magnitude an input value may have.
pub const MAX_INPUT_ABS: f64 = 1e6;

/// How long a client has to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// The seed of the demo's training data.
pub const TRAINING_SEED: u64 = 0x4255_4c57_4152_4b31; // "BULWARK1"

/// The seed of the demo's held-out data.
pub const HELD_OUT_SEED: u64 = 0x4255_4c57_4152_4b32; // "BULWARK2"

/// Training points, half per class.
pub const TRAINING_POINTS: usize = 2000;

/// Half the distance between the two clusters' centres (class 1 at `+CENTRE`, class 0
/// at `-CENTRE`, unit variance): the Bayes accuracy is Φ(|CENTRE|) ≈ 97 %.
pub const CENTRE: [f64; DIM] = [1.0, -0.5, 0.8, 0.3, -1.2, 0.6];

// ---------------------------------------------------------------------------------
// Model

/// A logistic regression: `p(class 1 | x) = σ(w·x + b)`. Its weights are zeroized when
/// it is dropped.
#[derive(Clone, PartialEq)]
pub struct Model {
    weights: Vec<f64>,
    bias: f64,
}

impl std::fmt::Debug for Model {
    // The weights are the tenant's secret: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("inputs", &self.weights.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        self.weights.zeroize();
        self.bias.zeroize();
    }
}

/// One answer: the class and the probability of class 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// 1 when `p >= 0.5`, else 0.
    pub class: u8,
    /// The model's probability of class 1.
    pub p: f64,
}

impl Model {
    /// A model from its weights and bias; every value finite, 1 to [`MAX_DIM`] weights.
    pub fn new(weights: Vec<f64>, bias: f64) -> Result<Self, WeightsError> {
        if weights.is_empty() || weights.len() > MAX_DIM {
            return Err(WeightsError::Shape(weights.len() as u64));
        }
        if !bias.is_finite() || weights.iter().any(|w| !w.is_finite()) {
            return Err(WeightsError::NotFinite);
        }
        Ok(Model { weights, bias })
    }

    /// The input width.
    pub fn inputs(&self) -> usize {
        self.weights.len()
    }

    /// The name the service answers with.
    pub fn name(&self) -> String {
        format!("logistic-regression-{}", self.inputs())
    }

    /// The weights (then [`Model::bias`]).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The bias.
    pub fn bias(&self) -> f64 {
        self.bias
    }

    /// `p(class 1 | x)`; `x` must have [`Model::inputs`] values.
    pub fn probability(&self, x: &[f64]) -> f64 {
        let z = self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>();
        sigmoid(z)
    }

    /// The class and its probability.
    pub fn predict(&self, x: &[f64]) -> Prediction {
        let p = self.probability(x);
        Prediction {
            class: u8::from(p >= 0.5),
            p,
        }
    }

    /// The fraction of `data` classified correctly.
    pub fn accuracy(&self, data: &[Sample]) -> f64 {
        if data.is_empty() {
            return 0.0;
        }
        let right = data
            .iter()
            .filter(|s| self.predict(&s.x).class == s.class)
            .count();
        right as f64 / data.len() as f64
    }
}

/// The logistic function, without overflow for large `|z|`.
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

// ---------------------------------------------------------------------------------
// Data and training

/// SplitMix64: a small, fixed, portable PRNG, so the demo's data is the same everywhere.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from its seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1).
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller; one of the pair is discarded).
    pub fn next_gaussian(&mut self) -> f64 {
        let u1 = self.next_open01();
        let u2 = self.next_open01();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// One labelled point.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The input.
    pub x: Vec<f64>,
    /// Its class, 0 or 1.
    pub class: u8,
}

/// `n` points from the two unit-variance Gaussian clusters around `±CENTRE`, classes
/// alternating (class 1 first).
pub fn synthetic_data(seed: u64, n: usize) -> Vec<Sample> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let class = u8::from(i % 2 == 0);
            let sign = if class == 1 { 1.0 } else { -1.0 };
            let x = CENTRE
                .iter()
                .map(|c| sign * c + rng.next_gaussian())
                .collect();
            Sample { x, class }
        })
        .collect()
}

/// A trained model and how well it does.
#[derive(Debug)]
pub struct Trained {
    /// The model.
    pub model: Model,
    /// Accuracy on its training data.
    pub training_accuracy: f64,
    /// Accuracy on held-out data from the same distribution.
    pub held_out_accuracy: f64,
}

/// Trains the demo model: full-batch gradient descent on the logistic loss over
/// [`TRAINING_POINTS`] points (a few milliseconds).
pub fn train() -> Trained {
    let data = synthetic_data(TRAINING_SEED, TRAINING_POINTS);
    let held_out = synthetic_data(HELD_OUT_SEED, TRAINING_POINTS / 2);
    let model = fit_logistic(&data, 300, 0.5);
    Trained {
        training_accuracy: model.accuracy(&data),
        held_out_accuracy: model.accuracy(&held_out),
        model,
    }
}

/// Gradient descent on the mean logistic loss. `data` non-empty, all of one width.
fn fit_logistic(data: &[Sample], epochs: usize, rate: f64) -> Model {
    let dim = data.first().map_or(DIM, |s| s.x.len());
    let mut w = vec![0.0; dim];
    let mut b = 0.0;
    let n = data.len().max(1) as f64;
    let mut grad = vec![0.0; dim];
    for _ in 0..epochs {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut grad_b = 0.0;
        for s in data {
            let z = b + w.iter().zip(&s.x).map(|(w, v)| w * v).sum::<f64>();
            let err = sigmoid(z) - f64::from(s.class);
            grad.iter_mut().zip(&s.x).for_each(|(g, v)| *g += err * v);
            grad_b += err;
        }
        w.iter_mut()
            .zip(&grad)
            .for_each(|(w, g)| *w -= rate * g / n);
        b -= rate * grad_b / n;
    }
    Model {
        weights: w,
        bias: b,
    }
}

/// The inputs the tenant's request carries, with the class each must get: the two
/// cluster centres and points further out along the line between them, where the
/// demo model is certain.
pub fn sample_inputs() -> Vec<Sample> {
    [1.0, -1.0, 2.0, -2.0, 1.5, -1.5, 3.0, -3.0]
        .iter()
        .map(|&t: &f64| Sample {
            x: CENTRE.iter().map(|c| t * c).collect(),
            class: u8::from(t > 0.0),
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Key and weights file

/// The tenant's 32-byte ChaCha20-Poly1305 key, zeroized on drop, never printed by
/// `Debug`.
#[derive(Clone)]
pub struct WeightsKey([u8; 32]);

impl std::fmt::Debug for WeightsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeightsKey(..)")
    }
}

impl Drop for WeightsKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl WeightsKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k)?;
        Ok(WeightsKey(k))
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        WeightsKey(bytes)
    }

    /// A key from exactly 64 hex digits (either case); the error never quotes the input.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        if text.len() != 64 {
            return Err(KeyError);
        }
        let mut k = [0u8; 32];
        if hex::decode_to_slice(text, &mut k).is_err() {
            k.zeroize();
            return Err(KeyError);
        }
        Ok(WeightsKey(k))
    }

    /// The 64 lowercase hex digits (zeroized when dropped).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

/// A key that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("weights_key must be 64 hex digits (a 32-byte key)")]
pub struct KeyError;

/// Why a weights file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsError {
    /// Shorter than header, nonce and tag.
    #[error("weights file truncated: {0} bytes, at least {min} needed", min = HEADER_LEN + NONCE_LEN + TAG_LEN)]
    TooShort(usize),
    /// Not our magic.
    #[error("not a Bulwark weights file (bad magic)")]
    Magic,
    /// Another version.
    #[error("weights file version {0} not supported (only {VERSION})")]
    Version(u16),
    /// Another model kind.
    #[error("weights file model kind {0} not supported (only {KIND_LOGISTIC_REGRESSION}, logistic regression)")]
    Kind(u8),
    /// Another element type.
    #[error(
        "weights file element type {0} not supported (only {DTYPE_F64_LE}, f64 little-endian)"
    )]
    Dtype(u8),
    /// A width of 0 or over [`MAX_DIM`].
    #[error("weights file model width {0} out of range (1 to {MAX_DIM})")]
    Shape(u64),
    /// Longer or shorter than the header says.
    #[error("weights file is {got} bytes, its header says {expected}")]
    Length {
        /// From the header.
        expected: usize,
        /// The file's.
        got: usize,
    },
    /// The tag did not verify.
    #[error("weights file authentication failed: wrong key, or the file was altered")]
    Authentication,
    /// A weight that is NaN or infinite (the key holder sealed garbage).
    #[error("weights file holds a value that is not finite")]
    NotFinite,
}

/// The parsed (not yet authenticated) header of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The model's input width.
    pub inputs: usize,
}

impl Header {
    /// The exact length of a file with this header.
    pub fn file_len(&self) -> usize {
        HEADER_LEN + NONCE_LEN + plaintext_len(self.inputs) + TAG_LEN
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10] = KIND_LOGISTIC_REGRESSION;
        h[11] = DTYPE_F64_LE;
        // `inputs <= MAX_DIM`, checked by `Model::new`.
        h[12..16].copy_from_slice(&(self.inputs as u32).to_le_bytes());
        h
    }
}

fn plaintext_len(inputs: usize) -> usize {
    (inputs + 1) * 8
}

/// Checks a weights file's header and exact length, without a key. Authentic only once
/// [`open`] has succeeded (the header is the associated data).
pub fn parse_header(file: &[u8]) -> Result<Header, WeightsError> {
    if file.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(WeightsError::TooShort(file.len()));
    }
    if file[0..8] != MAGIC {
        return Err(WeightsError::Magic);
    }
    let version = u16::from_le_bytes([file[8], file[9]]);
    if version != VERSION {
        return Err(WeightsError::Version(version));
    }
    if file[10] != KIND_LOGISTIC_REGRESSION {
        return Err(WeightsError::Kind(file[10]));
    }
    if file[11] != DTYPE_F64_LE {
        return Err(WeightsError::Dtype(file[11]));
    }
    let inputs = u32::from_le_bytes([file[12], file[13], file[14], file[15]]);
    if inputs == 0 || inputs as usize > MAX_DIM {
        return Err(WeightsError::Shape(u64::from(inputs)));
    }
    let header = Header {
        inputs: inputs as usize,
    };
    if file.len() != header.file_len() {
        return Err(WeightsError::Length {
            expected: header.file_len(),
            got: file.len(),
        });
    }
    Ok(header)
}

/// The plaintext that [`seal`] encrypts: the weights, then the bias, each an f64
/// little-endian.
pub fn plaintext(model: &Model) -> Zeroizing<Vec<u8>> {
    let mut plain = Zeroizing::new(Vec::with_capacity(plaintext_len(model.inputs())));
    for v in model.weights.iter().chain(std::iter::once(&model.bias)) {
        plain.extend_from_slice(&v.to_le_bytes());
    }
    plain
}

/// Seals `model` under `key` with a fresh random nonce.
pub fn seal(model: &Model, key: &WeightsKey) -> Result<Vec<u8>, getrandom::Error> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce)?;
    Ok(seal_with_nonce(model, key, nonce))
}

/// Seals `model` under `key` and `nonce` (never reuse a nonce under one key: [`seal`]).
pub fn seal_with_nonce(model: &Model, key: &WeightsKey, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
    let header = Header {
        inputs: model.inputs(),
    }
    .encode();
    let plain = plaintext(model);
    let sealed = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &header,
            },
        )
        // ChaCha20-Poly1305 fails only past 256 GiB of plaintext.
        .unwrap_or_default();
    let mut file = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
    file.extend_from_slice(&header);
    file.extend_from_slice(&nonce);
    file.extend_from_slice(&sealed);
    file
}

/// Opens a weights file with `key`: the header, the exact length, then the tag over
/// header and ciphertext. The plaintext is zeroized once the model is built.
pub fn open(file: &[u8], key: &WeightsKey) -> Result<Model, WeightsError> {
    let header = parse_header(file)?;
    let nonce = &file[HEADER_LEN..HEADER_LEN + NONCE_LEN];
    let plain = Zeroizing::new(
        key.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: &file[HEADER_LEN + NONCE_LEN..],
                    aad: &file[..HEADER_LEN],
                },
            )
            .map_err(|_| WeightsError::Authentication)?,
    );
    if plain.len() != plaintext_len(header.inputs) {
        // Impossible once the tag verified and the length matched; refuse anyway.
        return Err(WeightsError::Length {
            expected: header.file_len(),
            got: file.len(),
        });
    }
    let mut values: Vec<f64> = Vec::with_capacity(header.inputs);
    let mut bias = 0.0;
    for (i, chunk) in plain.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        let v = f64::from_le_bytes(b);
        b.zeroize();
        if i < header.inputs {
            values.push(v);
        } else {
            bias = v;
        }
    }
    // `Model::new` rejects non-finite values; `values` is zeroized either way (by
    // `Model`'s drop, or here).
    if !bias.is_finite() || values.iter().any(|v| !v.is_finite()) {
        values.zeroize();
        return Err(WeightsError::NotFinite);
    }
    Ok(Model {
        weights: values,
        bias,
    })
}

// ---------------------------------------------------------------------------------
// Request protocol

/// A parsed request: the key and the inputs.
#[derive(Debug)]
pub struct Request {
    /// The key of the weights file.
    pub key: WeightsKey,
    /// The rows to classify, each finite, `|v| <= MAX_INPUT_ABS`.
    pub inputs: Vec<Vec<f64>>,
}

/// Why a request was refused. The messages never quote the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Over [`MAX_REQUEST_BYTES`].
    #[error("request larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    /// Not sent in time.
    #[error("request not complete within {} s", REQUEST_DEADLINE.as_secs())]
    Timeout,
    /// Not a JSON document.
    #[error("request is not JSON: {0}")]
    Json(String),
    /// A JSON document of the wrong shape.
    #[error("request: {0}")]
    Invalid(String),
    /// The key.
    #[error("request: {0}")]
    Key(#[from] KeyError),
    /// The weights did not open.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// An input of the wrong width.
    #[error("request: input {index} has {got} values, the model takes {expected}")]
    Width {
        /// The input's index.
        index: usize,
        /// Its width.
        got: usize,
        /// The model's.
        expected: usize,
    },
}

/// Parses a request: one JSON object with exactly `weights_key` (64 hex digits) and
/// `inputs` (1 to [`MAX_INPUTS`] arrays of numbers). The key's text is zeroized.
pub fn parse_request(bytes: &[u8]) -> Result<Request, RequestError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge);
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| RequestError::Json(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(RequestError::Invalid("not a JSON object".into()));
    };
    let key = match map.remove("weights_key") {
        Some(Value::String(mut text)) => {
            let key = WeightsKey::from_hex(&text);
            text.zeroize();
            key?
        }
        Some(mut other) => {
            zeroize_value(&mut other);
            return Err(RequestError::Key(KeyError));
        }
        None => return Err(RequestError::Invalid("missing weights_key".into())),
    };
    let inputs = map
        .remove("inputs")
        .ok_or_else(|| RequestError::Invalid("missing inputs".into()))?;
    if !map.is_empty() {
        return Err(RequestError::Invalid(
            "unexpected field (only weights_key and inputs)".into(),
        ));
    }
    let Value::Array(rows) = inputs else {
        return Err(RequestError::Invalid("inputs must be an array".into()));
    };
    if rows.is_empty() || rows.len() > MAX_INPUTS {
        return Err(RequestError::Invalid(format!(
            "inputs must hold 1 to {MAX_INPUTS} rows, not {}",
            rows.len()
        )));
    }
    let mut inputs = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let Value::Array(values) = row else {
            return Err(RequestError::Invalid(format!(
                "input {i} must be an array of numbers"
            )));
        };
        let mut x = Vec::with_capacity(values.len());
        for v in values {
            match v.as_f64() {
                Some(v) if v.is_finite() && v.abs() <= MAX_INPUT_ABS => x.push(v),
                _ => {
                    return Err(RequestError::Invalid(format!(
                        "input {i} must hold numbers of magnitude at most {MAX_INPUT_ABS}"
                    )))
                }
            }
        }
        inputs.push(x);
    }
    Ok(Request { key, inputs })
}

/// Zeroizes the strings of a JSON value (a key sent in the wrong place).
fn zeroize_value(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(zeroize_value),
        Value::Object(o) => o.values_mut().for_each(zeroize_value),
        _ => {}
    }
}

/// The service's work for one request: its answer and a log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// One JSON line, newline-terminated.
    pub answer: String,
    /// For the service's log: counts or the refusal, no secret.
    pub summary: String,
    /// Whether the request was answered with predictions.
    pub ok: bool,
}

/// Handles one request against the sealed weights: parse, open the weights with the
/// request's key, check the widths, predict. Key and model are dropped (zeroized)
/// before this returns.
pub fn handle_request(weights_file: &[u8], request: &[u8]) -> Handled {
    match predict_request(weights_file, request) {
        Ok((name, predictions)) => {
            let preds: Vec<Value> = predictions
                .iter()
                .map(|p| json!({"class": p.class, "p": p.p}))
                .collect();
            let mut answer = json!({"model": name, "predictions": preds}).to_string();
            answer.push('\n');
            Handled {
                summary: format!("answered {} predictions with {name}", predictions.len()),
                answer,
                ok: true,
            }
        }
        Err(e) => refusal(&e),
    }
}

/// The answer to a refused request.
pub fn refusal(e: &RequestError) -> Handled {
    let mut answer = json!({"error": e.to_string()}).to_string();
    answer.push('\n');
    Handled {
        answer,
        summary: format!("refused: {e}"),
        ok: false,
    }
}

fn predict_request(
    weights_file: &[u8],
    request: &[u8],
) -> Result<(String, Vec<Prediction>), RequestError> {
    let request = parse_request(request)?;
    let model = open(weights_file, &request.key)?;
    for (index, x) in request.inputs.iter().enumerate() {
        if x.len() != model.inputs() {
            return Err(RequestError::Width {
                index,
                got: x.len(),
                expected: model.inputs(),
            });
        }
    }
    let predictions = request.inputs.iter().map(|x| model.predict(x)).collect();
    Ok((model.name(), predictions))
}

// ---------------------------------------------------------------------------------
// Server

/// Reads a request to EOF: at most [`MAX_REQUEST_BYTES`], within `deadline`. The
/// buffer is allocated once at full size (no reallocation leaves copies of the key
/// behind) and zeroized on drop.
pub fn read_request(
    stream: &mut TcpStream,
    deadline: Duration,
) -> Result<Zeroizing<Vec<u8>>, RequestError> {
    let end = Instant::now() + deadline;
    let mut buf = Zeroizing::new(vec![0u8; MAX_REQUEST_BYTES + 1]);
    let mut len = 0;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RequestError::Timeout);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| RequestError::Timeout)?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len > MAX_REQUEST_BYTES {
                    return Err(RequestError::TooLarge);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(RequestError::Timeout)
            }
            Err(e) => return Err(RequestError::Invalid(format!("read failed: {e}"))),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Serves one connection: read the request, answer, close. Returns the log line.
pub fn serve_connection(
    weights_file: &[u8],
    mut stream: TcpStream,
    journal: Option<&mut ScratchJournal>,
) -> String {
    let started = Instant::now();
    let (handled, request) = match read_request(&mut stream, REQUEST_DEADLINE) {
        Ok(request) => (handle_request(weights_file, &request), Some(request)),
        Err(e) => (refusal(&e), None),
    };
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let sent = stream
        .write_all(handled.answer.as_bytes())
        .and_then(|()| stream.flush());
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let kept = match (journal, &request) {
        (Some(j), Some(r)) => match j.record(r, handled.answer.as_bytes()) {
            Ok(at) => format!("; kept on scratch at byte {at}"),
            Err(e) => format!("; not kept on scratch: {e}"),
        },
        _ => String::new(),
    };
    let micros = started.elapsed().as_micros();
    match sent {
        Ok(()) => format!("{}{kept} ({micros} us)", handled.summary),
        Err(e) => format!(
            "{}{kept} ({micros} us); answer not sent: {e}",
            handled.summary
        ),
    }
}

/// Accepts connections one at a time and serves each; `log` gets one line per
/// connection. With `connections`, returns after that many. With `journal`, each
/// request and its answer are kept there.
pub fn serve(
    listener: &TcpListener,
    weights_file: &[u8],
    connections: Option<u64>,
    mut journal: Option<&mut ScratchJournal>,
    mut log: impl FnMut(&str),
) -> io::Result<()> {
    let mut served = 0u64;
    while connections.is_none_or(|n| served < n) {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        served += 1;
        let line = serve_connection(weights_file, stream, journal.as_deref_mut());
        log(&format!("connection {served} from {peer}: {line}"));
    }
    Ok(())
}

/// The service's working journal on a raw block device: in the VM, `/dev/scratch`,
/// which bulwark-init maps through dm-crypt with a key made at boot. Block 0 holds
/// [`ScratchJournal::HEADER`]; then each record (the request as received, key
/// included, and the answer) starts on a 4 KiB boundary, written and synced before
/// the next connection. At the end of the device it starts again after the header.
/// What it keeps is the plaintext the node must never see: the test of the main job
/// looks for it in the node's files.
#[derive(Debug)]
pub struct ScratchJournal {
    file: std::fs::File,
    next: u64,
    len: u64,
}

impl ScratchJournal {
    /// The first bytes of block 0.
    pub const HEADER: &'static [u8] = b"demo-inference scratch journal v1\n";
    /// Records start on these boundaries.
    pub const BLOCK: u64 = 4096;

    /// Opens `path` (a block device or a file) read-write and writes the header.
    pub fn open(path: &std::path::Path) -> io::Result<ScratchJournal> {
        use std::io::Seek;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let len = file.seek(io::SeekFrom::End(0))?;
        if len < 4 * Self::BLOCK {
            return Err(io::Error::other(format!(
                "{}: {len} bytes; a journal needs at least {}",
                path.display(),
                4 * Self::BLOCK
            )));
        }
        let mut j = ScratchJournal {
            file,
            next: Self::BLOCK,
            len,
        };
        j.write_synced(0, Self::HEADER)?;
        Ok(j)
    }

    fn write_synced(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let padded = bytes.len().div_ceil(Self::BLOCK as usize) * Self::BLOCK as usize;
        let mut block = Zeroizing::new(vec![0u8; padded]);
        block[..bytes.len()].copy_from_slice(bytes);
        self.file.write_all_at(&block, at)?;
        self.file.sync_data()
    }

    /// Keeps `request` and `answer`; returns the byte offset of the record.
    pub fn record(&mut self, request: &[u8], answer: &[u8]) -> io::Result<u64> {
        let mut rec = Zeroizing::new(Vec::with_capacity(request.len() + answer.len() + 64));
        rec.extend_from_slice(format!("request {}\n", request.len()).as_bytes());
        rec.extend_from_slice(request);
        rec.extend_from_slice(format!("\nanswer {}\n", answer.len()).as_bytes());
        rec.extend_from_slice(answer);
        let size = (rec.len() as u64).div_ceil(Self::BLOCK) * Self::BLOCK;
        if size > self.len - Self::BLOCK {
            return Err(io::Error::other(format!(
                "a {size}-byte record does not fit a {}-byte journal",
                self.len
            )));
        }
        if self.next + size > self.len {
            self.next = Self::BLOCK;
        }
        let at = self.next;
        self.write_synced(at, &rec)?;
        self.next += size;
        Ok(at)
    }
}

// ---------------------------------------------------------------------------------
// The tenant's check of an answer

/// Extracts the service's answer from what the tenant saved: the answer line itself,
/// `bulwark-verify connect --send` text output (after `--- received N bytes ---`), or
/// its `--json` output (`atls.received`).
pub fn extract_answer(saved: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(saved) {
        if let Some(received) = v.pointer("/atls/received").and_then(Value::as_str) {
            return received.trim().to_string();
        }
    }
    if let Some(pos) = saved.rfind("--- received ") {
        let rest = &saved[pos..];
        if let Some(nl) = rest.find('\n') {
            return rest[nl + 1..].trim().to_string();
        }
    }
    saved.trim().to_string()
}

/// Checks an answer to the request `demo-tenant train` wrote ([`sample_inputs`]): well
/// formed, one prediction per input, `p` in [0, 1] and agreeing with the class, and the
/// known class for every sample. Returns the predictions.
pub fn check_answer(answer: &str, expected: &[Sample]) -> Result<Vec<Prediction>, String> {
    let v: Value =
        serde_json::from_str(answer.trim()).map_err(|e| format!("answer is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("answer is not a JSON object")?;
    if let Some(err) = obj.get("error") {
        return Err(format!(
            "the service refused: {}",
            err.as_str().unwrap_or("(not a string)")
        ));
    }
    let want_model = format!("logistic-regression-{DIM}");
    match obj.get("model").and_then(Value::as_str) {
        Some(m) if m == want_model => {}
        Some(m) => return Err(format!("answer from model {m:?}, expected {want_model:?}")),
        None => return Err("answer has no model".into()),
    }
    if obj.len() != 2 {
        return Err("answer has fields other than model and predictions".into());
    }
    let preds = obj
        .get("predictions")
        .and_then(Value::as_array)
        .ok_or("answer has no predictions array")?;
    if preds.len() != expected.len() {
        return Err(format!(
            "{} predictions for {} inputs",
            preds.len(),
            expected.len()
        ));
    }
    let mut out = Vec::with_capacity(preds.len());
    for (i, (p, s)) in preds.iter().zip(expected).enumerate() {
        let class = p.get("class").and_then(Value::as_u64);
        let prob = p.get("p").and_then(Value::as_f64);
        let (Some(class), Some(prob)) = (class, prob) else {
            return Err(format!("prediction {i} lacks class or p"));
        };
        if class > 1 || !(0.0..=1.0).contains(&prob) {
            return Err(format!(
                "prediction {i} out of range: class {class}, p {prob}"
            ));
        }
        if (class == 1) != (prob >= 0.5) {
            return Err(format!(
                "prediction {i}: class {class} disagrees with p {prob}"
            ));
        }
        if class != u64::from(s.class) {
            return Err(format!(
                "prediction {i}: class {class}, but that sample is class {}",
                s.class
            ));
        }
        out.push(Prediction {
            class: class as u8,
            p: prob,
        });
    }
    Ok(out)
}

/// The request `demo-tenant train` writes: the key and [`sample_inputs`].
pub fn sample_request(key: &WeightsKey) -> Zeroizing<String> {
    let inputs: Vec<Vec<f64>> = sample_inputs().into_iter().map(|s| s.x).collect();
    let hex = key.to_hex();
    let mut v = json!({"weights_key": hex.as_str(), "inputs": inputs});
    let text = Zeroizing::new(format!("{v}\n"));
    zeroize_value(&mut v);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> WeightsKey {
        WeightsKey::from_bytes([byte; 32])
    }

    fn small_model() -> Model {
        Model::new(vec![0.5, -1.25, 2.0], 0.125).unwrap()
    }

    fn demo_file() -> (Model, WeightsKey, Vec<u8>) {
        let trained = train();
        let k = key(7);
        let file = seal_with_nonce(&trained.model, &k, [3; NONCE_LEN]);
        (trained.model.clone(), k, file)
    }

    fn request_bytes(k: &WeightsKey, inputs: &Value) -> Vec<u8> {
        json!({"weights_key": k.to_hex().as_str(), "inputs": inputs})
            .to_string()
            .into_bytes()
    }

    fn answer_json(h: &Handled) -> Value {
        assert!(h.answer.ends_with('\n'));
        assert_eq!(h.answer.matches('\n').count(), 1);
        serde_json::from_str(h.answer.trim()).unwrap()
    }

    fn error_of(h: &Handled) -> String {
        assert!(!h.ok, "{}", h.answer);
        answer_json(h)["error"].as_str().unwrap().to_string()
    }

    #[test]
    fn inference_training_is_deterministic_and_accurate() {
        let started = Instant::now();
        let a = train();
        assert!(started.elapsed() < Duration::from_secs(5));
        let b = train();
        assert_eq!(a.model, b.model);
        assert!(a.training_accuracy > 0.93, "{}", a.training_accuracy);
        assert!(a.held_out_accuracy > 0.93, "{}", a.held_out_accuracy);
        assert_eq!(a.model.inputs(), DIM);
        assert_eq!(a.model.name(), "logistic-regression-6");
        // The weights point along the clusters' axis.
        let dot: f64 = a
            .model
            .weights()
            .iter()
            .zip(CENTRE)
            .map(|(w, c)| w * c)
            .sum();
        assert!(dot > 0.0);
    }

    #[test]
    fn inference_data_is_balanced_and_prng_fixed() {
        let mut r = SplitMix64::new(0);
        // SplitMix64's published first output for seed 0.
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        let d = synthetic_data(1, 100);
        assert_eq!(d.iter().filter(|s| s.class == 1).count(), 50);
        assert!(d.iter().all(|s| s.x.len() == DIM));
        let mut g = SplitMix64::new(9);
        let xs: Vec<f64> = (0..20_000).map(|_| g.next_gaussian()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn inference_samples_are_classified_as_known() {
        let t = train();
        for s in sample_inputs() {
            let p = t.model.predict(&s.x);
            assert_eq!(p.class, s.class, "{:?}", s.x);
            assert!(p.p > 0.9 || p.p < 0.1);
        }
    }

    #[test]
    fn inference_sigmoid_is_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(1e308), 1.0);
        assert_eq!(sigmoid(-1e308), 0.0);
        assert!(sigmoid(-800.0) >= 0.0);
    }

    #[test]
    fn inference_seal_open_round_trip() {
        let m = small_model();
        let k = key(1);
        let file = seal_with_nonce(&m, &k, [9; NONCE_LEN]);
        assert_eq!(file.len(), 16 + 12 + 4 * 8 + 16);
        assert_eq!(&file[..8], b"BWWEIGHT");
        assert_eq!(&file[8..16], &[1, 0, 1, 1, 3, 0, 0, 0]);
        assert_eq!(&file[16..28], &[9; 12]);
        assert_eq!(parse_header(&file).unwrap(), Header { inputs: 3 });
        let back = open(&file, &k).unwrap();
        assert_eq!(back, m);
        // Random nonces differ; both open.
        let a = seal(&m, &k).unwrap();
        let b = seal(&m, &k).unwrap();
        assert_ne!(a[16..28], b[16..28]);
        assert_eq!(open(&a, &k).unwrap(), m);
        assert_eq!(open(&b, &k).unwrap(), m);
        assert_eq!(plaintext(&m).len(), 32);
        assert_eq!(&plaintext(&m)[24..], &0.125f64.to_le_bytes());
        // The plaintext is not in the file.
        let plain = 0.5f64.to_le_bytes();
        assert!(!file.windows(8).any(|w| w == plain));
    }

    #[test]
    fn inference_wrong_key_is_refused() {
        let m = small_model();
        let file = seal_with_nonce(&m, &key(1), [0; NONCE_LEN]);
        assert_eq!(open(&file, &key(2)), Err(WeightsError::Authentication));
        let mut k = [1u8; 32];
        k[31] ^= 1;
        assert_eq!(
            open(&file, &WeightsKey::from_bytes(k)),
            Err(WeightsError::Authentication)
        );
        assert!(WeightsError::Authentication
            .to_string()
            .contains("wrong key"));
    }

    #[test]
    fn inference_every_flipped_bit_is_refused() {
        let m = small_model();
        let k = key(5);
        let file = seal_with_nonce(&m, &k, [1; NONCE_LEN]);
        for i in 0..file.len() {
            for bit in 0..8 {
                let mut bad = file.clone();
                bad[i] ^= 1 << bit;
                let err = open(&bad, &k).unwrap_err();
                if i >= HEADER_LEN {
                    // Nonce, ciphertext and tag: only the tag can tell.
                    assert_eq!(err, WeightsError::Authentication, "byte {i} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn inference_truncated_oversized_and_garbage_files_are_refused() {
        let m = small_model();
        let k = key(5);
        let file = seal_with_nonce(&m, &k, [1; NONCE_LEN]);
        for len in 0..file.len() {
            assert!(open(&file[..len], &k).is_err(), "prefix {len}");
        }
        assert!(matches!(
            open(&file[..50], &k),
            Err(WeightsError::Length {
                expected: 76,
                got: 50
            })
        ));
        assert!(matches!(
            open(&file[..10], &k),
            Err(WeightsError::TooShort(10))
        ));
        let mut long = file.clone();
        long.push(0);
        assert!(matches!(open(&long, &k), Err(WeightsError::Length { .. })));
        // A header that claims a huge model.
        let mut huge = file.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            open(&huge, &k),
            Err(WeightsError::Shape(u64::from(u32::MAX)))
        );
        let mut zero = file.clone();
        zero[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(open(&zero, &k), Err(WeightsError::Shape(0)));
        let mut v2 = file.clone();
        v2[8] = 2;
        assert_eq!(open(&v2, &k), Err(WeightsError::Version(2)));
        // A header with another width but the same length fails the tag.
        let other = Model::new(vec![1.0; 3], 0.0).unwrap();
        let mut rewidth = seal_with_nonce(&other, &k, [1; NONCE_LEN]);
        rewidth[12] = 2;
        rewidth.truncate(rewidth.len() - 8);
        assert_eq!(open(&rewidth, &k), Err(WeightsError::Authentication));
        // Garbage of many lengths, with and without a valid-looking header.
        let mut rng = SplitMix64::new(42);
        for len in 0..300 {
            let mut g: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            assert!(open(&g, &k).is_err());
            if len >= HEADER_LEN {
                g[..HEADER_LEN].copy_from_slice(&file[..HEADER_LEN]);
                assert!(open(&g, &k).is_err());
            }
        }
    }

    #[test]
    fn inference_non_finite_weights_are_refused() {
        assert_eq!(
            Model::new(vec![f64::NAN], 0.0),
            Err(WeightsError::NotFinite)
        );
        assert_eq!(Model::new(vec![], 0.0), Err(WeightsError::Shape(0)));
        // Seal a NaN by hand (the key holder can): refused when opened.
        let k = key(3);
        let bad = Model {
            weights: vec![1.0, f64::INFINITY],
            bias: 0.0,
        };
        let file = seal_with_nonce(&bad, &k, [0; NONCE_LEN]);
        assert_eq!(open(&file, &k), Err(WeightsError::NotFinite));
    }

    #[test]
    fn inference_key_hex() {
        let k = WeightsKey::from_bytes([0xab; 32]);
        assert_eq!(k.to_hex().as_str(), "ab".repeat(32));
        assert!(WeightsKey::from_hex(&"AB".repeat(32)).is_ok());
        for bad in [
            "",
            "ab",
            &"ab".repeat(33),
            &"zz".repeat(32),
            &"é".repeat(32),
        ] {
            assert_eq!(WeightsKey::from_hex(bad).unwrap_err(), KeyError);
        }
        assert_eq!(format!("{k:?}"), "WeightsKey(..)");
        assert!(!format!("{:?}", small_model()).contains("0.5"));
        let a = WeightsKey::generate().unwrap();
        let b = WeightsKey::generate().unwrap();
        assert_ne!(a.to_hex(), b.to_hex());
    }

    #[test]
    fn inference_handler_answers_good_requests() {
        let (model, k, file) = demo_file();
        let samples = sample_inputs();
        let req = sample_request(&k);
        let h = handle_request(&file, req.as_bytes());
        assert!(h.ok, "{}", h.answer);
        assert_eq!(
            h.summary,
            "answered 8 predictions with logistic-regression-6"
        );
        assert!(!h.summary.contains(k.to_hex().as_str()));
        let preds = check_answer(&h.answer, &samples).unwrap();
        for (p, s) in preds.iter().zip(&samples) {
            let want = model.predict(&s.x);
            assert_eq!(p.class, want.class);
            assert!((p.p - want.p).abs() < 1e-12);
        }
        // Integers are numbers too; one row.
        let h = handle_request(&file, &request_bytes(&k, &json!([[0, 0, 0, 0, 0, 0]])));
        let v = answer_json(&h);
        assert_eq!(v["model"], "logistic-regression-6");
        assert_eq!(v["predictions"].as_array().unwrap().len(), 1);
        // The answer from a raw line, bulwark-verify's text and its JSON all extract.
        let line = h.answer.clone();
        assert_eq!(extract_answer(&line), line.trim());
        let text = format!(
            "affirmed ...\n--- received {} bytes ---\n{line}\n",
            line.len()
        );
        assert_eq!(extract_answer(&text), line.trim());
        let js = json!({"ear": {}, "atls": {"sent": "x", "received": line}}).to_string();
        assert_eq!(extract_answer(&js), line.trim());
    }

    #[test]
    fn inference_handler_refuses_bad_requests() {
        let (_, k, file) = demo_file();
        let six = json!([[1, 2, 3, 4, 5, 6]]);
        let hex = k.to_hex();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "not JSON"),
            (b"{".to_vec(), "not JSON"),
            (vec![0xff, 0xfe, 0x00], "not JSON"),
            (b"[1,2]".to_vec(), "not a JSON object"),
            (
                br#"{"inputs": [[1,2,3,4,5,6]]}"#.to_vec(),
                "missing weights_key",
            ),
            (
                json!({"weights_key": hex.as_str()})
                    .to_string()
                    .into_bytes(),
                "missing inputs",
            ),
            (
                json!({"weights_key": hex.as_str(), "inputs": six, "x": 1})
                    .to_string()
                    .into_bytes(),
                "unexpected field",
            ),
            (
                json!({"weights_key": 5, "inputs": six})
                    .to_string()
                    .into_bytes(),
                "64 hex digits",
            ),
            (
                json!({"weights_key": "abc", "inputs": six})
                    .to_string()
                    .into_bytes(),
                "64 hex digits",
            ),
            (request_bytes(&key(8), &six), "wrong key"),
            (request_bytes(&k, &json!([])), "1 to 1024 rows"),
            (request_bytes(&k, &json!({})), "must be an array"),
            (request_bytes(&k, &json!([1])), "input 0 must be an array"),
            (
                request_bytes(&k, &json!([[1, 2, 3, 4, 5, 6], [1, 2, 3]])),
                "input 1 has 3 values, the model takes 6",
            ),
            (
                request_bytes(&k, &json!([[1, 2, 3, 4, 5, 6, 7]])),
                "input 0 has 7 values",
            ),
            (
                request_bytes(&k, &json!([[1, 2, 3, 4, 5, "6"]])),
                "magnitude",
            ),
            (
                request_bytes(&k, &json!([[1, 2, 3, 4, 5, 1e300]])),
                "magnitude",
            ),
            (
                request_bytes(&k, &json!([[1, 2, 3, 4, 5, null]])),
                "magnitude",
            ),
            (
                request_bytes(
                    &k,
                    &Value::Array(vec![json!([0, 0, 0, 0, 0, 0]); MAX_INPUTS + 1]),
                ),
                "1 to 1024 rows",
            ),
            (vec![b' '; MAX_REQUEST_BYTES + 1], "larger than 1048576"),
        ];
        for (req, want) in cases {
            let h = handle_request(&file, &req);
            let err = error_of(&h);
            assert!(err.contains(want), "{err:?} lacks {want:?}");
            assert!(!err.contains(hex.as_str()) && !h.summary.contains(hex.as_str()));
            assert!(h.summary.starts_with("refused: "));
        }
        // A request is fine, the weights are not.
        let h = handle_request(&file[..50], &request_bytes(&k, &six));
        assert!(error_of(&h).contains("truncated") || error_of(&h).contains("bytes"));
        // Garbage never panics.
        let mut rng = SplitMix64::new(7);
        for len in 0..200 {
            let g: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            assert!(!handle_request(&file, &g).ok);
        }
    }

    #[test]
    fn inference_check_answer_refuses_bad_answers() {
        let samples = sample_inputs();
        let good: Vec<Value> = samples
            .iter()
            .map(|s| json!({"class": s.class, "p": if s.class == 1 { 0.99 } else { 0.01 }}))
            .collect();
        let ok = json!({"model": "logistic-regression-6", "predictions": good}).to_string();
        assert!(check_answer(&ok, &samples).is_ok());
        let mut flipped = good.clone();
        flipped[0] = json!({"class": 0, "p": 0.01});
        let mut disagree = good.clone();
        disagree[0] = json!({"class": 1, "p": 0.2});
        let mut range = good.clone();
        range[0] = json!({"class": 1, "p": 1.5});
        let bad = [
            "".to_string(),
            "nonsense".to_string(),
            r#"{"error": "weights file authentication failed"}"#.to_string(),
            json!({"model": "other", "predictions": good}).to_string(),
            json!({"model": "logistic-regression-6", "predictions": good[..3]}).to_string(),
            json!({"model": "logistic-regression-6", "predictions": flipped}).to_string(),
            json!({"model": "logistic-regression-6", "predictions": disagree}).to_string(),
            json!({"model": "logistic-regression-6", "predictions": range}).to_string(),
            json!({"model": "logistic-regression-6", "predictions": good, "x": 1}).to_string(),
        ];
        for b in bad {
            assert!(check_answer(&b, &samples).is_err(), "{b}");
        }
        assert!(check_answer(r#"{"error": "boom"}"#, &samples)
            .unwrap_err()
            .contains("refused: boom"));
    }

    #[test]
    fn inference_server_over_tcp() {
        let (_, k, file) = demo_file();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_file = file.clone();
        let journal_path = std::env::temp_dir().join(format!(
            "bulwark-journal-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::File::create(&journal_path)
            .and_then(|f| f.set_len(64 << 10))
            .unwrap();
        let mut journal = ScratchJournal::open(&journal_path).unwrap();
        let server = std::thread::spawn(move || {
            let mut lines = Vec::new();
            serve(&listener, &server_file, Some(3), Some(&mut journal), |l| {
                lines.push(l.to_string())
            })
            .unwrap();
            lines
        });
        let talk = |req: &[u8]| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(req).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        };
        let samples = sample_inputs();
        let good = talk(sample_request(&k).as_bytes());
        assert_eq!(check_answer(&good, &samples).unwrap().len(), samples.len());
        let wrong = talk(&request_bytes(&key(9), &json!([[0, 0, 0, 0, 0, 0]])));
        assert!(wrong.contains("authentication failed"), "{wrong}");
        let garbage = talk(b"\x00\x01garbage");
        assert!(garbage.contains("not JSON"), "{garbage}");
        let lines = server.join().unwrap();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("connection 1 from 127.0.0.1:"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("answered 8 predictions"));
        assert!(lines[1].contains("refused: weights file authentication failed"));
        assert!(lines[2].contains("refused: request is not JSON"));
        let hex = k.to_hex();
        assert!(lines.iter().all(|l| !l.contains(hex.as_str())));
        // The journal: the header, then each request as received with its answer.
        assert!(
            lines[0].contains("kept on scratch at byte 4096"),
            "{}",
            lines[0]
        );
        let kept = std::fs::read(&journal_path).unwrap();
        let _ = std::fs::remove_file(&journal_path);
        assert!(kept.starts_with(ScratchJournal::HEADER));
        let first = String::from_utf8_lossy(&kept[4096..8192]);
        assert!(first.starts_with("request "), "{first}");
        assert!(first.contains(hex.as_str()) && first.contains(good.trim()));
        assert!(String::from_utf8_lossy(&kept[8192..]).contains("authentication failed"));
    }

    #[test]
    fn the_journal_wraps_after_its_header_and_refuses_what_cannot_fit() {
        let path =
            std::env::temp_dir().join(format!("bulwark-journal-wrap-{}", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(4 * ScratchJournal::BLOCK))
            .unwrap();
        let mut j = ScratchJournal::open(&path).unwrap();
        let at: Vec<u64> = (0..4)
            .map(|i| j.record(format!("r{i}").as_bytes(), b"a").unwrap())
            .collect();
        assert_eq!(at, [4096, 8192, 12288, 4096]);
        let big = vec![b'x'; 4 * 4096];
        assert!(j
            .record(&big, b"")
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
        let kept = std::fs::read(&path).unwrap();
        assert!(kept.starts_with(ScratchJournal::HEADER));
        assert!(kept[4096..].starts_with(b"request 2\nr3"));
        // Too small a device to hold a journal at all.
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(8192))
            .unwrap();
        assert!(ScratchJournal::open(&path).is_err());
        let _ = std::fs::remove_file(&path);
    }
}

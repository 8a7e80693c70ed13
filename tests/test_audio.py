import audioop

import numpy as np
import pytest

from engine.audio import LineEncoder, StreamingResampler, decode_g711, encode_g711


@pytest.mark.parametrize("codec,ref_enc,ref_dec", [
    ("PCMU", audioop.lin2ulaw, audioop.ulaw2lin),
    ("PCMA", audioop.lin2alaw, audioop.alaw2lin),
])
def test_g711_matches_the_reference_for_every_input(codec, ref_enc, ref_dec):
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert encode_g711(x, codec) == ref_enc(x.tobytes(), 2)
    codes = bytes(range(256))
    assert decode_g711(codes, codec).tobytes() == ref_dec(codes, 2)


def test_g711_known_points():
    assert encode_g711(np.array([0], np.int16), "PCMU") == b"\xff"
    assert encode_g711(np.array([0], np.int16), "PCMA") == b"\xd5"
    assert decode_g711(b"\x00", "PCMU")[0] == -32124


def _noise(n, seed=0):
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 37, 441, 1000, 4096])
def test_chunked_resampling_equals_whole_signal(chunk):
    x = _noise(22050 * 2)
    whole = StreamingResampler(22050)
    ref = np.concatenate([whole.process(x), whole.flush()])
    r = StreamingResampler(22050)
    parts = [r.process(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [r.flush()]
    out = np.concatenate(parts)
    assert len(out) == len(ref) == 16000
    np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("in_rate", [22050, 24000, 16000, 48000])
def test_no_energy_folds_into_the_telephone_band(in_rate):
    t = np.arange(in_rate * 2) / in_rate
    r = StreamingResampler(in_rate)
    inband = np.concatenate([r.process((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)), r.flush()])
    r = StreamingResampler(in_rate)
    high = [5000, 6000, 7000]
    out_band = np.concatenate([r.process(sum(0.5 * np.sin(2 * np.pi * f * t) for f in high).astype(np.float32)),
                               r.flush()])
    rms_in = np.sqrt(np.mean(inband[800:-800] ** 2))
    rms_alias = np.sqrt(np.mean(out_band[800:-800] ** 2))
    # A 1 kHz tone passes at full level; tones above 4 kHz (which would alias to 1-3 kHz)
    # are below the filter's stopband: at least 90 dB down.
    assert rms_in == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert 20 * np.log10(rms_alias / rms_in + 1e-20) < -90


def test_line_encoder_streams_g711_at_8khz():
    enc = LineEncoder(24000, "PCMU")
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(24000) / 24000)).astype(np.float32)
    data = b"".join(enc.encode(x[i:i + 480]) for i in range(0, len(x), 480)) + enc.finish()
    assert len(data) == 8000
    y = decode_g711(data, "PCMU").astype(np.float64) / 32768
    spectrum = np.abs(np.fft.rfft(y[1000:-1000]))
    freqs = np.fft.rfftfreq(len(y) - 2000, 1 / 8000)
    assert abs(freqs[np.argmax(spectrum)] - 440) < 2

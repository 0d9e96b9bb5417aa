"""Sound of the embedded world: real sampled instruments from the General MIDI soundfont.

Melodies are abstract (scale steps, rhythm, dynamics) and drawn from a random stream keyed by
(seed, split, index), so train/val/test melodies are disjoint by construction; a melody is placed
in each instrument's natural range when rendered. ``tinysoundfont`` renders the soundfont that
ships with ``pretty_midi`` (TimGM6mb.sf2). All signals here are mono float32 numpy arrays [L].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsep.errors import BadInputError


@dataclass(frozen=True)
class Instrument:
    """A General MIDI program (0-based) and the MIDI key range it plays naturally."""

    program: int
    low: int
    high: int


INSTRUMENTS: dict[str, Instrument] = {
    "accordion": Instrument(21, 53, 81),
    "acoustic guitar": Instrument(24, 40, 76),
    "cello": Instrument(42, 36, 69),
    "clarinet": Instrument(71, 50, 84),
    "flute": Instrument(73, 60, 96),
    "saxophone": Instrument(65, 49, 81),
    "trumpet": Instrument(56, 54, 82),
    "tuba": Instrument(58, 28, 58),
    "violin": Instrument(40, 55, 88),
    "xylophone": Instrument(13, 65, 96),
}
OFFSCREEN_KINDS = ("instrument", "drums", "noise")
TARGET_RMS_DB = -20.0  # every source is normalised to this RMS so classes are equally loud
SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "interference": 4}
SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
}
NOTE_BEATS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
NOTE_BEAT_WEIGHTS = (0.15, 0.35, 0.1, 0.25, 0.08, 0.07)
STEPS = (-4, -3, -2, -1, 0, 1, 2, 3, 4)
STEP_WEIGHTS = (0.03, 0.07, 0.15, 0.22, 0.06, 0.22, 0.15, 0.07, 0.03)
MAX_DEGREE = 10  # a melody spans at most ~1.5 octaves, so it fits every instrument's range


@dataclass(frozen=True)
class Note:
    """One note: onset and length (s), semitones above the melody's lowest pitch, velocity."""

    onset_s: float
    length_s: float
    semitone: int
    velocity: int


@dataclass(frozen=True)
class Melody:
    """A monophonic melody, independent of instrument; ``register`` (0 low, 1 high) places it."""

    melody_id: str
    notes: tuple[Note, ...]
    register: float


def check_classes(classes: tuple[str, ...]) -> None:
    """Raise BadInputError unless every class has a soundfont instrument."""
    unknown = [c for c in classes if c not in INSTRUMENTS]
    if unknown:
        raise BadInputError(
            f"world.classes: no General MIDI instrument for {unknown}; "
            f"known classes: {sorted(INSTRUMENTS)}"
        )


def make_melody(seed: int, split: str, index: int, length_s: float) -> Melody:
    """The ``index``-th melody of ``split``, long enough to fill ``length_s`` seconds.

    Notes are drawn one at a time from one stream, so a longer ``length_s`` only extends the melody.
    """
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    beat_s = 60.0 / rng.uniform(60.0, 150.0)
    scale = SCALES[list(SCALES)[rng.integers(len(SCALES))]]
    legato = rng.uniform(0.55, 0.95)
    loudness, slope = rng.uniform(65, 110), rng.uniform(-3.0, 3.0)
    degree, t, notes = int(rng.integers(0, MAX_DEGREE + 1)), rng.uniform(0.0, 0.3), []
    while t < length_s:
        if rng.random() < 0.12 and notes:  # a rest, never before the first note (short clips)
            t += beat_s * rng.choice((0.5, 1.0))
            continue
        beats = rng.choice(NOTE_BEATS, p=NOTE_BEAT_WEIGHTS)
        degree = int(np.clip(degree + rng.choice(STEPS, p=STEP_WEIGHTS), 0, MAX_DEGREE))
        semitone = 12 * (degree // len(scale)) + scale[degree % len(scale)]
        velocity = int(np.clip(loudness + slope * t + rng.normal(0, 8), 35, 127))
        notes.append(Note(float(t), float(beats * beat_s * legato), int(semitone), velocity))
        t += beats * beat_s
    return Melody(f"{split}-{index:04d}", tuple(notes), float(rng.uniform(0.15, 0.85)))


@functools.lru_cache(maxsize=1)
def soundfont_path() -> str:
    """The General MIDI soundfont shipped inside the pretty_midi package."""
    import pretty_midi

    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise BadInputError(f"soundfont not found: {path} (reinstall pretty_midi)")
    return str(path)


def _new_synth(sample_rate: int, channel: int, bank: int, program: int, drums: bool):
    """A fresh synthesizer per source: no voice state leaks from one render into the next."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    sfid = synth.sfload(soundfont_path())
    synth.program_select(channel, sfid, bank, program, is_drums=drums)
    return synth


def _play(
    synth, channel: int, events: list[tuple[float, int, int, int]], n: int, sr: int
) -> np.ndarray:
    """Render (time_s, order, key, velocity) events (velocity 0 = note off) into n mono samples."""
    out, done = np.zeros(n, np.float32), 0
    for time_s, _, key, velocity in sorted(events):
        until = min(n, round(time_s * sr))
        if until > done:
            block = np.frombuffer(synth.generate(until - done), np.float32)
            out[done:until] = block.reshape(-1, 2).mean(1)
            done = until
        if velocity:
            synth.noteon(channel, key, velocity)
        else:
            synth.noteoff(channel, key)
    if n > done:
        out[done:] = np.frombuffer(synth.generate(n - done), np.float32).reshape(-1, 2).mean(1)
    return out


def render_melody(melody: Melody, label: str, length_s: float, sample_rate: int) -> np.ndarray:
    """The melody played by ``label``'s instrument, RMS-normalised: float32 [round(length_s*sr)]."""
    inst = INSTRUMENTS[label]
    span = max(n.semitone for n in melody.notes) if melody.notes else 0
    base = inst.low + round(melody.register * max(0, inst.high - inst.low - span))
    events = []
    for note in melody.notes:
        key = min(base + note.semitone, inst.high)
        events.append((note.onset_s, 1, key, note.velocity))
        events.append((note.onset_s + note.length_s, 0, key, 0))  # offs sort before ons
    synth = _new_synth(sample_rate, 0, 0, inst.program, drums=False)
    wave = _play(synth, 0, events, round(length_s * sample_rate), sample_rate)
    return normalise_rms(wave, f"{label} melody {melody.melody_id}")


def render_drums(rng: np.random.Generator, length_s: float, sample_rate: int) -> np.ndarray:
    """A random rock-ish drum groove (kick, snare, hi-hat) from the GM drum kit: float32 [L]."""
    step_s = 60.0 / rng.uniform(80.0, 140.0) / 4  # sixteenth notes
    events, k = [], 0
    while k * step_s < length_s:
        t, beat_pos = k * step_s, k % 16
        hits = [
            (36, beat_pos in (0, 8) or rng.random() < 0.08),  # kick
            (38, beat_pos in (4, 12) or rng.random() < 0.04),  # snare
            (42, beat_pos % 2 == 0 and rng.random() < 0.9),
        ]  # closed hi-hat
        for key, on in hits:
            if on:
                events += [(t, 1, key, int(rng.integers(70, 120))), (t + step_s * 0.9, 0, key, 0)]
        k += 1
    synth = _new_synth(sample_rate, 9, 128, 0, drums=True)
    wave = _play(synth, 9, events, round(length_s * sample_rate), sample_rate)
    return normalise_rms(wave, "drum groove")


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f**exponent (1 = pink, 2 = brown), RMS-normalised: float32 [n]."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    wave = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return normalise_rms(wave.astype(np.float32), "coloured noise")


def noise_bursts(rng: np.random.Generator, length_s: float, sample_rate: int) -> np.ndarray:
    """Off-screen non-musical noise: band-limited bursts (wind, traffic, crowd): float32 [L]."""
    n = round(length_s * sample_rate)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    centre, width = rng.uniform(200, 4000), rng.uniform(0.3, 1.2)
    spectrum *= np.exp(-0.5 * (np.log2(np.maximum(freqs, 1.0) / centre) / width) ** 2)
    knots = rng.uniform(0.05, 1.0, size=max(2, int(length_s * 2)))
    envelope = np.interp(np.linspace(0, len(knots) - 1, n), np.arange(len(knots)), knots) ** 2
    return normalise_rms((np.fft.irfft(spectrum, n) * envelope).astype(np.float32), "noise bursts")


def normalise_rms(wave: np.ndarray, what: str, target_db: float = TARGET_RMS_DB) -> np.ndarray:
    """Scale ``wave`` to ``target_db`` dBFS RMS; a silent render is an error, not a zero signal."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    if not np.isfinite(rms) or rms < 1e-7:
        raise BadInputError(f"{what} rendered silent (RMS {rms:.2e}); check the soundfont/program")
    return (wave * (10 ** (target_db / 20) / rms)).astype(np.float32)


def db_to_gain(db: float) -> float:
    """Amplitude gain of a level difference in dB."""
    return float(10 ** (db / 20))

"""The demo's handlers called directly: input checks, separation, pictures, model card, examples."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_params_at
from media_factory import VideoSpec, write_video

from app import handlers
from clipsep.errors import BadInputError


def write_tiny_model(root: Path):
    """(tiny params under root, checkpoint path): a random tiny separator + random tiny CLIP."""
    from clipsep.model.factory import build_model, save_checkpoint
    from clipsep.model.query import QueryEncoder

    params = tiny_params_at(root, **{"separate.device": "cpu"})
    encoder = QueryEncoder.from_config(params.clip, None, "cpu")
    clip_file = params.path("clip_model") / "clip.pt"
    clip_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": encoder.model.state_dict()}, clip_file)
    query = {**encoder.reference(), "pretrained": str(clip_file)}
    torch.manual_seed(0)
    model = build_model(params.model, encoder.embed_dim)
    checkpoint = save_checkpoint(
        params.path("checkpoints") / "best.pt",
        model,
        model_cfg=params.model,
        audio_cfg=params.audio,
        query=query,
        extra={"step": 4, "metrics": {"val_sdr": 1.5}},
    )
    return params, checkpoint


def write_mini_world(params, classes=("cello", "flute", "trumpet")) -> Path:
    """A world folder with one clean test video per class and its ground_truth.csv."""
    world = params.path("world")
    rows = []
    for index, label in enumerate(classes):
        video = f"test/w{index:05d}.mp4"
        write_video(
            world / "videos" / video,
            VideoSpec(seconds=3.0, tone_hz=220.0 * (index + 1), seed=index),
        )
        rows.append(
            {
                "video_id": f"w{index:05d}",
                "video": video,
                "split": "test",
                "labels": label,
                "offscreen": "",
                "melody_id": index,
                "duration_s": 3.0,
            }
        )
    with (world / "ground_truth.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return world


def tone(seconds: float, rate: int = 22050, channels: int = 2, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = 0.05 * np.random.default_rng(0).standard_normal(t.size)
    wave = level * np.sin(2 * np.pi * 440.0 * t) + noise
    return np.tile(wave.astype(np.float32), (channels, 1))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("app")
    params, checkpoint = write_tiny_model(root)
    params = tiny_params_at(root, **{"separate.device": "cpu", "serve.model": str(checkpoint)})
    separator, card = handlers.load_model(params)
    return params, separator, card, root


def upload(root: Path, name: str, wave: np.ndarray, rate: int = 22050) -> Path:
    path = root / "uploads" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.T, rate)
    return path


def test_separates_an_upload_into_target_and_residual(served):
    params, separator, card, root = served
    mixture = tone(3.0)
    path = upload(root, "mix.wav", mixture)
    seen = []
    result = handlers.separate_upload(
        separator,
        path,
        "  flute ",
        None,
        params.serve,
        progress=lambda share, what: seen.append(share),
    )
    assert result.target.shape == result.residual.shape == mixture.shape
    assert np.allclose(result.target + result.residual, mixture, atol=1e-4)
    assert seen and seen[-1] == 1.0
    assert "text 'flute'" in result.summary and "mix.wav" in result.summary
    assert result.picture.size[0] > 2 * result.picture.size[1]  # three panels side by side
    (rate, pcm), (_, rest) = result.players
    assert rate == 22050 and pcm.dtype == rest.dtype == np.int16
    assert pcm.shape == rest.shape == (mixture.shape[1], 2)


def test_players_sum_to_a_16_bit_upload_sample_for_sample(served):
    """The players' int16 come from the CLI's writer arithmetic (outputs.pcm_blocks): stems
    rounded to the nearest step, the residual the upload's steps minus theirs."""
    params, separator, _, root = served
    path = root / "uploads" / "pcm16.wav"
    sf.write(path, tone(2.0, level=0.6).T, 22050, subtype="PCM_16")
    steps, _ = sf.read(path, dtype="int16", always_2d=True)
    result = handlers.separate_upload(separator, path, "flute, cello, violin", None, params.serve)
    assert len(result.players) == 4 and all(rate == 22050 for rate, _ in result.players)
    total = sum(pcm.astype(np.int32) for _, pcm in result.players)
    np.testing.assert_array_equal(total, steps)
    stems = [*result.stems.values(), result.residual]
    for (_, pcm), wave in zip(result.players[:-1], stems):  # each stem: its nearest step
        assert np.abs(pcm / 32768.0 - wave.T).max() <= 0.5001 / 32768
    # the residual takes the stems' rounding: at most half a step each, plus its own half
    assert np.abs(result.players[-1][1] / 32768.0 - stems[-1].T).max() <= 2.0001 / 32768


def test_stem_files_are_named_as_the_cli_names_them_and_hold_the_players(served, tmp_path):
    """A new-user trial: every download was "audio.wav" (gradio's name for numpy audio)."""
    params, separator, _, root = served
    path = upload(root, "named.wav", tone(1.0))
    result = handlers.separate_upload(separator, path, "flute, Cello/Bass?", None, params.serve)
    files = handlers.write_players(result, tmp_path)
    assert [f.name for f in files] == ["flute.wav", "Cello_Bass.wav", "residual.wav"]
    for file, (rate, pcm) in zip(files, result.players):
        wave, file_rate = sf.read(file, dtype="int16")
        assert file_rate == rate and sf.info(file).subtype == "PCM_16"
        np.testing.assert_array_equal(wave, pcm)
    with pytest.raises(BadInputError, match="differ only in case"):  # before any work
        handlers.separate_upload(separator, path, "flute, Flute", None, params.serve)


def test_comma_separated_queries_give_one_stem_each_with_activity(served):
    params, separator, _, root = served
    mixture = tone(3.0)
    path = upload(root, "mix2.wav", mixture)
    result = handlers.separate_upload(separator, path, "flute, cello ,", None, params.serve)
    assert list(result.stems) == ["flute", "cello"] and list(result.activity) == ["flute", "cello"]
    assert np.allclose(sum(result.stems.values()) + result.residual, result.mixture, atol=1e-5)
    assert "'flute' sounds at" in result.summary and "'cello' sounds at" in result.summary
    single = handlers.separate_upload(separator, path, "flute", None, params.serve)
    assert result.picture.size[0] > 1.2 * single.picture.size[0]  # four panels, not three
    with pytest.raises(BadInputError, match="up to 4"):
        handlers.separate_upload(separator, path, "a, b, c, d, e", None, params.serve)


def test_video_offers_its_middle_frame_and_its_sound_is_separated(served):
    params, separator, _, root = served
    video = write_video(root / "uploads" / "clip.mp4", VideoSpec(seconds=2.5))
    frame = handlers.offered_image(video)
    assert frame is not None and frame.size == (64, 48)
    result = handlers.separate_upload(separator, video, "", frame, params.serve)
    assert "image query" in result.summary and result.rate == 44100
    assert handlers.offered_image(upload(root, "plain.wav", tone(1.0))) is None
    # no query at all (as an API client may send): the middle frame, as clipsep separate does
    unasked = handlers.separate_upload(separator, video, None, None, params.serve)
    assert "query: the video's middle frame (image query)" in unasked.summary
    np.testing.assert_allclose(unasked.target, result.target, atol=1e-6)


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("silence", "silent"),
        ("corrupt", "unreadable"),
        ("empty query", "No query"),
        ("unsupported", "no audio track"),
        ("too long", "serve.max_seconds"),
        ("too big", "serve.max_file_mb"),
        ("outside", "not an upload"),
        ("none", "No input"),
    ],
)
def test_bad_input_gets_a_readable_message(served, problem, expected):
    params, separator, _, root = served
    cfg = dataclasses.replace(
        params.serve,
        max_seconds=2.0 if problem == "too long" else 60.0,
        max_file_mb=0 if problem == "too big" else 50,
    )
    path = {
        "silence": lambda: upload(root, "silent.wav", np.zeros((1, 22050), np.float32)),
        "corrupt": lambda: _write_bytes(root / "uploads" / "broken.mp3", b"ID3 not audio" * 50),
        "unsupported": lambda: _write_bytes(root / "uploads" / "notes.txt", b"hello " * 100),
        "outside": lambda: Path(handlers.__file__),
        "none": lambda: None,
    }.get(problem, lambda: upload(root, "ok.wav", tone(3.0)))()
    text = "" if problem == "empty query" else "cello"
    with pytest.raises(BadInputError, match=expected) as caught:
        accepted = handlers.check_upload(path, cfg, [root / "uploads"])
        handlers.separate_upload(separator, accepted, text, None, cfg)
    assert str(root) not in str(caught.value)  # names the file, not the server's folders


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_spectrogram_picture_of_a_long_file_stays_small():
    long_wave = tone(120.0, rate=16000, channels=1)
    spec = handlers.log_spectrogram(long_wave, 16000)
    assert spec.shape[0] == handlers.SPECTROGRAM_FFT // 2 + 1
    assert spec.shape[1] <= handlers.SPECTROGRAM_COLUMNS + 1


def test_checkpoint_card_shows_what_the_checkpoint_records(served):
    _, _, card, _ = served
    text = card.markdown()
    assert "best.pt" in text and "val_sdr **1.50**" in text and "step=4" in text


def test_registry_card_reads_version_tags_and_run_metrics(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("demo", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "eval/text/sdr/mean", 4.25)
    client.log_metric(run.info.run_id, "eval/n_mixtures", 82)
    client.create_registered_model("clipsep")
    version = client.create_model_version(
        "clipsep",
        f"runs:/{run.info.run_id}/model",
        run_id=run.info.run_id,
        tags={"data_version": "abc123def456xyz", "git_commit": "0123456789ab"},
    )
    client.set_registered_model_alias("clipsep", "champion", version.version)
    card = handlers.registry_card("models:/clipsep@champion", uri)
    assert (card.version, card.aliases, card.data_version) == ("1", "champion", "abc123def456xyz")
    assert card.metrics == {"text SDR (dB)": 4.25, "test mixtures": 82}
    assert "text SDR (dB) **4.25** · test mixtures **82**" in card.markdown()  # a count: no .00
    mlflow.set_tracking_uri(None)


def test_several_queries_label_each_player_with_its_query_and_one_keeps_target():
    """New-user trial: with "cello, violin" the first player still said "Target (the queried
    sound)" while the second said "Stem: violin"."""
    from app.demo import stem_players

    first, second, *rest = stem_players("cello, violin")
    assert (first["label"], second["label"], second["visible"]) == (
        "Stem: cello",
        "Stem: violin",
        True,
    )
    assert rest and not any(update["visible"] for update in rest)
    assert stem_players("cello")[0]["label"] == handlers.TARGET_LABEL
    assert stem_players("")[0]["label"] == handlers.TARGET_LABEL


def test_each_spectrogram_panel_is_titled_as_its_player():
    """New-user trial: the player said "Stem: cello" above a spectrogram titled "Target:
    cello"."""
    from app.demo import stem_players

    for text in ("cello, violin", "cello"):
        players = [update["label"] for update in stem_players(text)]
        titles = handlers.panel_titles(handlers.split_queries(text))
        assert titles[1:-1] == players[: len(titles) - 2]
        assert (titles[0], titles[-1]) == ("Mixture", handlers.RESIDUAL_LABEL)
    assert handlers.panel_titles(["cello", "violin"])[1:3] == ["Stem: cello", "Stem: violin"]


def test_examples_mix_two_different_instruments_once(tmp_path):
    params = tiny_params_at(tmp_path)
    write_mini_world(params)
    examples = handlers.build_examples(params, tmp_path / "cache", count=2)
    assert len(examples) == 2 and len({e.query for e in examples}) == 2
    for example in examples:
        first, second = example.title.split(" + ")
        assert example.query == first != second
        audio, rate = sf.read(example.audio_path, always_2d=True)
        assert rate == 44100 and abs(audio.shape[0] / rate - 3.0) < 0.1  # AAC adds a few frames
        assert np.abs(audio).max() > 0.1
    stamp = examples[0].audio_path.stat().st_mtime_ns
    handlers.build_examples(params, tmp_path / "cache", count=2)
    assert examples[0].audio_path.stat().st_mtime_ns == stamp  # cached, not rewritten
    assert handlers.build_examples(tiny_params_at(tmp_path / "empty"), tmp_path / "c2") == []


@pytest.mark.slow  # ~30 s on the shared machine: `register` logs a real pyfunc model
def test_serves_the_registry_champion_and_shows_its_lineage(tmp_path):
    """serve.model = models:/clipsep@champion from a real (sqlite) registry filled by `register`."""
    from platform_inputs import save_random_clip, write_pipeline_outputs

    from clipsep import tracking

    params = tiny_params_at(tmp_path, **{"separate.device": "cpu"})
    assert params.serve.model == "models:/clipsep@champion"
    write_pipeline_outputs(
        params, text_sdr=5.0, clip_weights=save_random_clip(params, tmp_path / "clip-source.pt")
    )
    registered = tracking.register(params)
    separator, card = handlers.load_model(params)
    assert (card.version, card.aliases) == (registered["version"], "champion")
    assert card.data_version == registered["data_version"]
    assert card.git_commit == registered["git_commit"]
    assert card.metrics["text SDR (dB)"] == pytest.approx(5.0)
    result = separator.separate(tone(1.0), 22050, query="cello")
    assert result.target.shape == (2, 22050)


def test_long_upload_is_separated_in_chunks_with_progress(served):
    params, separator, _, root = served
    mixture = tone(40.0, rate=16000, channels=1)
    path = upload(root, "long.wav", mixture, rate=16000)
    seen = []
    result = handlers.separate_upload(
        separator,
        path,
        "cello",
        None,
        params.serve,
        progress=lambda share, what: seen.append((share, what)),
    )
    assert result.target.shape == mixture.shape
    assert len(seen) > 10 and [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert seen[-1][1].endswith(f"{len(seen)}/{len(seen)}")


def test_the_model_flag_is_relative_to_the_working_folder(tmp_path, monkeypatch, caplog):
    """`python -m app --profile tiny --model models/clipsep/best.pt` took the path from the
    profile's root (runs/tiny/), `clipsep separate --model` from the working folder: both now
    take it from the working folder, and a missing one's error names it under the root."""
    from app.__main__ import serve
    from conftest import REPO

    root = tmp_path / "runs" / "tiny"
    _, checkpoint = write_tiny_model(root)
    assert checkpoint == root / "models" / "clipsep" / "best.pt"
    monkeypatch.chdir(tmp_path)
    flags = ["--params", str(REPO / "params.yaml"), "--profile", "tiny"]
    caplog.clear()
    assert serve([*flags, "--set", f"paths.root={root}", "--model", "models/clipsep/best.pt"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "checkpoint models/clipsep/best.pt not found (paths on the command line are relative to "
        f"the working folder {tmp_path}); under --profile tiny's root it is "
        "runs/tiny/models/clipsep/best.pt"
    ]
    params = tiny_params_at(root, **{"separate.device": "cpu"})
    separator, _ = handlers.load_model(params, "runs/tiny/models/clipsep/best.pt")
    assert separator.source.checkpoint == Path("runs/tiny/models/clipsep/best.pt")
    # serve.model (a params value) is still taken from the root
    params = tiny_params_at(
        root, **{"separate.device": "cpu", "serve.model": "models/clipsep/best.pt"}
    )
    separator, _ = handlers.load_model(params)
    assert separator.source.checkpoint == checkpoint
